"""The compiled scorer runs on any x86-64: AVX instructions appear only in the kernels that the
run-time dispatch picks after checking the CPU, never in shared code a generic CPU would execute."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

import twotower._C

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
    reason="checks x86-64 machine code with binutils' objdump",
)

FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
# VEX/EVEX-encoded instructions (AVX and later) start with "v"; wide registers are ymm/zmm, masks k0-k7.
NEEDS_AVX = re.compile(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\s|%[yz]mm\d|%k[0-7]")


def avx_functions() -> dict[str, int]:
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", twotower._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, int] = {}
    current = "?"
    for line in listing.splitlines():
        match = FUNCTION.match(line)
        if match:
            current = match.group(1)
        elif NEEDS_AVX.search(line):
            found[current] = found.get(current, 0) + 1
    return found


def test_avx_only_inside_dispatched_kernels():
    found = avx_functions()
    assert any("avx512" in name for name in found), "the AVX-512 kernel was not compiled (symbols stripped?)"
    assert any("avx2" in name for name in found), "the AVX2 kernel was not compiled"
    stray = {name: count for name, count in found.items() if "avx2" not in name and "avx512" not in name}
    assert not stray, f"AVX instructions outside the dispatched kernels: {stray}"


def test_avx512_instructions_only_in_the_avx512_kernel():
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", twotower._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    current = "?"
    for line in listing.splitlines():
        match = FUNCTION.match(line)
        if match:
            current = match.group(1)
        elif re.search(r"%zmm\d|%k[0-7]", line):
            assert "avx512" in current, f"AVX-512 register use in {current}: {line.strip()}"


def test_the_screening_kernel_uses_vnni_dot_products():
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", twotower._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    current, users = "?", set()
    for line in listing.splitlines():
        match = FUNCTION.match(line)
        if match:
            current = match.group(1)
        elif re.search(r"\svpdpbusd\s", line):
            users.add(current)
    assert users and all("avx512_vnni" in name for name in users), users
