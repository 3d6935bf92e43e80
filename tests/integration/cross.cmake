# Integration tests of a cross-built bridge (boards/build.sh --test): the
# bridge runs under CMAKE_CROSSCOMPILING_EMULATOR (qemu-user) against native
# redis-server and mosquitto on loopback, through a wrapper script passed as
# --bridge. Included by CMakeLists.txt here instead of the native tests.
#
# A subset, to keep CI short (the whole set takes ~120 s per board under
# qemu; these ~50 s): what can differ between CPUs and word sizes runs here,
# the I/O-free logic already runs under qemu as the unit tests.
#   config     error texts and --check output (size_t/int64 formatting)
#   forwarding both directions, binary payloads, Paho's threads, hiredis
#   status     retained online/offline, Last Will, clean shutdown
#   bad_input  malformed and oversized input
#   mqtt311    64-bit fingerprints of echo suppression (32-bit armhf)
#   streams    stream mode: XREADGROUP replies, entry ids, pending entries
# Left out: routes, urls (pure mapping, unit-tested), multi, restart,
# shutdown (timing of reconnects; native runs cover them).
set(MRB_QEMU_TESTS config forwarding status bad_input mqtt311 streams
    CACHE STRING "Integration tests run under the emulator in cross builds")

if(NOT CMAKE_CROSSCOMPILING_EMULATOR)
  message(STATUS "cross build without CMAKE_CROSSCOMPILING_EMULATOR: no integration tests")
  return()
endif()

string(REPLACE ";" " " _mrb_emu "${CMAKE_CROSSCOMPILING_EMULATOR}")
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/emulated-bridge
     CONTENT "#!/bin/sh\nexec ${_mrb_emu} $<TARGET_FILE:mqtt-redis-bridge> \"$@\"\n"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
foreach(t ${MRB_QEMU_TESTS})
  add_test(NAME qemu_${t}
           COMMAND ${MRB_IT_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_${t}.py
                   --bridge ${CMAKE_CURRENT_BINARY_DIR}/emulated-bridge)
  # qemu-user starts a process in ~50 ms and runs it several times slower.
  set_tests_properties(qemu_${t} PROPERTIES TIMEOUT 300 LABELS qemu
                       ENVIRONMENT MRB_TIMEOUT_SCALE=3)
endforeach()
