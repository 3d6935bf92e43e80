# Install rules and Debian packages (CPack). Included by CMakeLists.txt after
# the mqtt-redis-bridge target. GNUInstallDirs paths:
#   sbin/mqtt-redis-bridge
#   <sysconfdir>/mqtt-redis-bridge/bridge.json   the board's default config
#                                                (/etc when the prefix is /usr)
#   share/doc/mqtt-redis-bridge/examples/bridge.json   the same, for reference
#   share/man/man8/mqtt-redis-bridge.8.gz
#   share/man/man5/mqtt-redis-bridge.json.5.gz
#   lib/systemd/system/mqtt-redis-bridge.service (MRB_SYSTEMD_UNIT_DIR)
# (prefix /usr: /etc/..., /usr/lib/systemd/system/..., /usr/sbin/...)
# Packages: `cpack -G DEB` in the build directory (boards/build.sh --package).

if(MRB_STATIC)
  target_link_options(mqtt-redis-bridge PRIVATE -static)
endif()

# Which board's default configuration to install (boards/<name>/bridge.json).
set(MRB_BOARD "x86_64" CACHE STRING "Board whose default bridge.json is installed")
set(MRB_BOARD_CONFIG "${PROJECT_SOURCE_DIR}/boards/${MRB_BOARD}/bridge.json")
if(NOT EXISTS "${MRB_BOARD_CONFIG}")
  message(FATAL_ERROR "MRB_BOARD=${MRB_BOARD}: no ${MRB_BOARD_CONFIG}")
endif()
# With the prefix /usr (packages), the configuration goes to /etc, as
# GNUInstallDirs' CMAKE_INSTALL_FULL_SYSCONFDIR says; with any other prefix to
# <prefix>/etc, relative, so that `cmake --install --prefix DIR` relocates
# it. (Staging a /usr install elsewhere: DESTDIR=DIR cmake --install BUILD.)
if(IS_ABSOLUTE "${CMAKE_INSTALL_SYSCONFDIR}")
  set(_mrb_etc "${CMAKE_INSTALL_SYSCONFDIR}/mqtt-redis-bridge")
elseif(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(_mrb_etc "/etc/mqtt-redis-bridge")
else()
  set(_mrb_etc "${CMAKE_INSTALL_SYSCONFDIR}/mqtt-redis-bridge")
endif()
set(MRB_CONFIG_FILE "${CMAKE_INSTALL_FULL_SYSCONFDIR}/mqtt-redis-bridge/bridge.json")
set(MRB_SYSTEMD_UNIT_DIR "lib/systemd/system"
    CACHE PATH "Where the systemd unit is installed (relative: under the prefix)")

install(FILES "${MRB_BOARD_CONFIG}" DESTINATION "${_mrb_etc}")
install(FILES "${MRB_BOARD_CONFIG}"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}/examples")
# the use-case configurations of examples/ (chat, stocks, scores,
# announcements) with their README
file(GLOB _mrb_examples "${PROJECT_SOURCE_DIR}/examples/*.json")
install(FILES ${_mrb_examples} "${PROJECT_SOURCE_DIR}/examples/README.md"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}/examples")

configure_file(packaging/mqtt-redis-bridge.service.in
               mqtt-redis-bridge.service @ONLY)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/mqtt-redis-bridge.service"
        DESTINATION "${MRB_SYSTEMD_UNIT_DIR}")

# Man pages: mqtt-redis-bridge(8) and mqtt-redis-bridge.json(5), their
# option and key lists filled in by mrb-docgen (a target program: under the
# cross build's emulator). Installed compressed (Debian policy); gzip -n: no
# name or time stamp. docs/CONFIGURATION.md is filled in by the same tool
# (target docs; the test docs_reference says when it is stale).
find_program(MRB_GZIP gzip)
if(CMAKE_CROSSCOMPILING AND NOT CMAKE_CROSSCOMPILING_EMULATOR)
  message(WARNING "cross build without CMAKE_CROSSCOMPILING_EMULATOR: "
                  "mrb-docgen cannot run, no man pages are built or installed")
  set(MRB_MAN_PAGES "")
else()
  set(MRB_MAN_PAGES mqtt-redis-bridge.8 mqtt-redis-bridge.json.5)
endif()
set(_mrb_docgen ${CMAKE_CROSSCOMPILING_EMULATOR} $<TARGET_FILE:mrb-docgen>)
set(_mrb_man_out "")
foreach(_page ${MRB_MAN_PAGES})
  configure_file(packaging/${_page}.in ${_page}.in @ONLY)
  string(REGEX MATCH "[0-9]$" _sect "${_page}")
  set(_out "${CMAKE_CURRENT_BINARY_DIR}/${_page}")
  add_custom_command(OUTPUT ${_page}
    COMMAND ${_mrb_docgen} -o ${_page} ${_page}.in
    DEPENDS mrb-docgen "${_out}.in"
    WORKING_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}")
  if(MRB_GZIP)
    add_custom_command(OUTPUT ${_page}.gz
      COMMAND ${MRB_GZIP} -9nc ${_page} > ${_page}.gz
      DEPENDS "${_out}"
      WORKING_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}")
    string(APPEND _out ".gz")
  endif()
  list(APPEND _mrb_man_out "${_out}")
  install(FILES "${_out}" DESTINATION "${CMAKE_INSTALL_MANDIR}/man${_sect}")
endforeach()
add_custom_target(mrb_manpage ALL DEPENDS ${_mrb_man_out})
add_custom_target(docs
  COMMAND ${_mrb_docgen} -o docs/CONFIGURATION.md docs/CONFIGURATION.md
  WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
  COMMENT "Filling in docs/CONFIGURATION.md from src/config.c and src/cli.c")

# Debian wants a changelog and a copyright file in every package's doc dir.
file(STRINGS packaging/changelog _mrb_chl LIMIT_COUNT 1)
if(NOT _mrb_chl MATCHES "^mqtt-redis-bridge \\(${PROJECT_VERSION}\\)")
  message(FATAL_ERROR "packaging/changelog: top entry is not version ${PROJECT_VERSION}")
endif()
if(MRB_GZIP)
  add_custom_command(OUTPUT changelog.gz
    COMMAND ${MRB_GZIP} -9nc "${PROJECT_SOURCE_DIR}/packaging/changelog" > changelog.gz
    DEPENDS "${PROJECT_SOURCE_DIR}/packaging/changelog"
    WORKING_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}")
  add_custom_target(mrb_changelog ALL DEPENDS changelog.gz)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/changelog.gz" packaging/copyright
          DESTINATION "${CMAKE_INSTALL_DOCDIR}")
endif()

# ---------------------------------------------------------------- CPack DEB
# Debian architecture: the toolchain file's (cross) or dpkg's (native).
if(MRB_CROSS_DEB_ARCH)
  set(MRB_DEB_ARCH ${MRB_CROSS_DEB_ARCH})
else()
  execute_process(COMMAND dpkg --print-architecture OUTPUT_VARIABLE MRB_DEB_ARCH
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()

# Depends: written out, not dpkg-shlibdeps, which needs the target
# architecture's libraries registered with dpkg (a cross build uses a sysroot).
# Versions are those of the libraries' shlibs files in Debian 12.
if(MRB_STATIC)
  set(_mrb_deps "")
else()
  set(_mrb_deps "libc6 (>= 2.34), libpaho-mqtt1.3 (>= 1.3.12), libhiredis0.14 (>= 0.14.1), libcjson1 (>= 1.7.15)")
  if(WITH_TLS)
    string(APPEND _mrb_deps ", libssl3 (>= 3.0.0)")
  endif()
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mqtt-redis-bridge)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "mqtt-redis-bridge developers <dev@mqtt-redis-bridge.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "bridge between MQTT topics and Redis pub/sub channels")
set(CPACK_PACKAGE_DESCRIPTION "A small daemon that forwards messages both ways between an MQTT broker
(such as mosquitto) and Redis pub/sub, along routes that map MQTT topic
filters to Redis channels and patterns, without echoes or loops. Runs as a
sandboxed systemd service configured in /etc/mqtt-redis-bridge/bridge.json.")
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${MRB_DEB_ARCH})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "${_mrb_deps}")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "mosquitto, redis-server")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
configure_file(packaging/deb/conffiles.in deb/conffiles @ONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_BINARY_DIR}/deb/conffiles"
    "${PROJECT_SOURCE_DIR}/packaging/deb/postinst"
    "${PROJECT_SOURCE_DIR}/packaging/deb/prerm"
    "${PROJECT_SOURCE_DIR}/packaging/deb/postrm")
include(CPack)
