"""What this CPU can do that changes which model is fastest to serve.

An int8 model (``classifier.quantize``) is only faster than the float32 one where the CPU
has int8 dot-product instructions, which XNNPACK's int8 kernels use: measured with
MobileNetV2 @224 on one thread, 3.3 ms against 7.2 ms per photo on an AMD EPYC with
AVX512-VNNI, 4.7 against 9.0 ms on an Intel machine with VNNI, but 10.2 against 9.4 ms
(slower) on an AMD EPYC with AVX2 alone. ``GRAFT_INT8=auto`` (the default) asks
:func:`int8_dot_product`.
"""

from __future__ import annotations

from pathlib import Path

# /proc/cpuinfo flag names: x86 (VNNI in its AVX-512 and AVX2 encodings, AMX) and Arm
# (the dot-product extension, "asimddp"; i8mm).
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
CPUINFO = Path("/proc/cpuinfo")


def int8_dot_product(cpuinfo: str | None = None) -> str | None:
    """The first int8 dot-product feature the CPU lists, or None.

    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when not given). Where there is no
    such file (not Linux) the answer is None: int8 is then only served when asked for.
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return next((flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in flags), None)
