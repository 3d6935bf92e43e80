# Raspberry Pi 3/4/5, Zero 2 W on 64-bit Raspberry Pi OS (Debian arm64):
# cmake -DCMAKE_TOOLCHAIN_FILE=boards/rpi-arm64/toolchain.cmake ...
# -mcpu=cortex-a53 tunes for the oldest 64-bit Pi and runs on all of them.
set(MRB_CROSS_TRIPLE aarch64-linux-gnu)
set(MRB_CROSS_PROCESSOR aarch64)
set(MRB_CROSS_QEMU qemu-aarch64)
set(MRB_CROSS_CFLAGS "-mcpu=cortex-a53")
set(MRB_CROSS_DEB_ARCH arm64)
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/DebianCross.cmake)
