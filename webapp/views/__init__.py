"""Views: thin functions that validate a form, call one service and redirect."""
