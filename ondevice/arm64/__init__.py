"""ARM64 parity under QEMU user-mode: build the emulator environment, run artefacts on emulated cores.

``setup_arm64`` builds qemu-aarch64 (>= 10), an arm64 Python userland and aarch64
onnxruntime/numpy wheels in a cache folder; ``arm64_parity`` runs the torch-free device
runner under ``qemu-aarch64 -cpu CORE`` and compares with the x86 onnxruntime outputs.
"""

from ondevice.arm64.parity import CORE_FAMILIES, DEFAULT_CORES, arm64_parity, parity_tolerance
from ondevice.arm64.setup import Arm64Env, default_cache, find_env, setup_arm64

__all__ = ["CORE_FAMILIES", "DEFAULT_CORES", "Arm64Env", "arm64_parity", "default_cache", "find_env",
           "parity_tolerance", "setup_arm64"]
