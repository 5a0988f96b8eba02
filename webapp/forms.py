"""Forms: input validation only; the work happens in services."""

from __future__ import annotations

from django import forms


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
