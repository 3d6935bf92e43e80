# Shared part of the boards' CMake toolchain files (boards/<name>/toolchain.cmake
# sets MRB_CROSS_TRIPLE, MRB_CROSS_PROCESSOR, MRB_CROSS_QEMU, MRB_CROSS_CFLAGS
# and includes this file).
#
# Compiler: Debian's cross gcc (<triple>-gcc, package gcc-<triple>).
# Libraries, one of two ways:
#   - MRB_SYSROOT (cache variable or environment variable) names a sysroot made
#     by boards/sysroot.sh: the target's Debian packages unpacked, multiarch
#     layout. boards/build.sh always does this.
#   - without it, the target's multiarch -dev packages installed on the host
#     (dpkg --add-architecture ARCH; apt-get install libpaho-mqtt-dev:ARCH ...).
# Tests: CMAKE_CROSSCOMPILING_EMULATOR runs target programs under qemu-user.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${MRB_CROSS_PROCESSOR})
set(CMAKE_C_COMPILER ${MRB_CROSS_TRIPLE}-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE ${MRB_CROSS_TRIPLE})
set(CMAKE_C_FLAGS_INIT "${MRB_CROSS_CFLAGS}")

if(NOT MRB_SYSROOT AND DEFINED ENV{MRB_SYSROOT})
  set(MRB_SYSROOT "$ENV{MRB_SYSROOT}")
endif()
# try_compile() projects re-read this file; pass the sysroot on to them.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES MRB_SYSROOT)

find_program(MRB_CROSS_QEMU_PATH ${MRB_CROSS_QEMU})

if(MRB_SYSROOT)
  set(CMAKE_SYSROOT "${MRB_SYSROOT}")
  set(CMAKE_FIND_ROOT_PATH "${MRB_SYSROOT}")
  set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
  set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
  set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
  set(ENV{PKG_CONFIG_SYSROOT_DIR} "${MRB_SYSROOT}")
  set(ENV{PKG_CONFIG_LIBDIR}
      "${MRB_SYSROOT}/usr/lib/${MRB_CROSS_TRIPLE}/pkgconfig:${MRB_SYSROOT}/usr/share/pkgconfig")
  # The sysroot's own loader and libc (one version): see boards/sysroot.sh.
  if(MRB_CROSS_QEMU_PATH)
    set(CMAKE_CROSSCOMPILING_EMULATOR "${MRB_CROSS_QEMU_PATH};-L;${MRB_SYSROOT}")
  endif()
else()
  set(ENV{PKG_CONFIG_LIBDIR}
      "/usr/lib/${MRB_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig")
  # Plain qemu: the multiarch loader (/lib/ld-linux-*.so) and libc6:ARCH
  # match. Not `-L /usr/<triple>`, whose loader is the cross toolchain's.
  if(MRB_CROSS_QEMU_PATH)
    set(CMAKE_CROSSCOMPILING_EMULATOR "${MRB_CROSS_QEMU_PATH}")
  endif()
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# valgrind (host) cannot run target binaries: no valgrind tests in cross builds.
set(VALGRIND "" CACHE FILEPATH "valgrind: not for cross builds")
