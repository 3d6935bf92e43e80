# Raspberry Pi 2/3/4/5, Zero 2 W, BeagleBone on 32-bit Debian armhf
# (ARMv7-A, hard-float, Thumb-2: Debian's armhf baseline):
# cmake -DCMAKE_TOOLCHAIN_FILE=boards/rpi-armhf/toolchain.cmake ...
# Not for ARMv6 (Pi 1, Zero, Zero W): Debian's armhf libraries need ARMv7.
set(MRB_CROSS_TRIPLE arm-linux-gnueabihf)
set(MRB_CROSS_PROCESSOR armv7l)
set(MRB_CROSS_QEMU qemu-arm)
set(MRB_CROSS_CFLAGS "")
set(MRB_CROSS_DEB_ARCH armhf)
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/DebianCross.cmake)
