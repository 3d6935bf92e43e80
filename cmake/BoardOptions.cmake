# Build options that trade features for size (see boards/README.md for what
# each costs, measured). Included by CMakeLists.txt after the libraries are
# found and before the targets are defined.
#
#   WITH_TLS=ON     (default) link Paho's TLS library (paho-mqtt3as +
#                   OpenSSL) instead of paho-mqtt3a: mqtts:// to the broker.
#   WITH_STATS_CMD=ON (default) the `stats` subcommand (src/statscmd.c: reads
#                   the bridges' reports from Redis); OFF leaves it out of
#                   the binary (the bridge still reports its statistics).
#   MRB_STATIC=ON   a fully static mqtt-redis-bridge (glibc included), for
#                   boards that have none of the libraries. Needs Debian's
#                   static libpaho-mqtt3a.a / libhiredis.a (shipped in the -dev
#                   packages) and cJSON built from source, because libcjson-dev
#                   ships no libcjson.a: MRB_CJSON_SOURCE_DIR names the
#                   directory holding cJSON.c (boards/build.sh --static unpacks
#                   Debian's cjson source package there).
#                   Also drops unused sections (-ffunction-sections
#                   -fdata-sections -Wl,--gc-sections: 20 KB of 1.3 MB; on
#                   the dynamic binary it saves nothing, so it is not used).
# WITH_TLS=ON (the default) links Paho's TLS variant and enables mqtts://
# (MRB_WITH_TLS=1). The bridge often runs on untrusted networks, and on
# Debian the TLS variant ships in the same package; it costs about 3.5 MB of
# RSS (OpenSSL is loaded even for mqtt://), so board builds turn it off
# unless asked (boards/build.sh --tls). Without it an mqtts:// URL is a
# configuration error ("built without TLS"). src/tls.c uses OpenSSL itself
# (minimum TLS version, the cause of a failed handshake).
option(WITH_TLS "Support mqtts:// (Paho's paho-mqtt3as + OpenSSL)" ON)
option(MRB_STATIC "Link mqtt-redis-bridge fully statically" OFF)
option(WITH_STATS_CMD "The stats subcommand (reads the bridges' reports from Redis)" ON)
if(WITH_STATS_CMD)
  add_compile_definitions(MRB_WITH_STATS_CMD=1)
else()
  add_compile_definitions(MRB_WITH_STATS_CMD=0)
endif()
# WITH_STREAMS=ON (default) stream mode and replay (src/stream.c,
# replay_io.c, replay.c); OFF builds src/stream_off.c instead and a stream
# route is a configuration error. WITH_ENVELOPE=ON (default) the json
# envelope and unwrap route options (src/envelope.c); OFF refuses them. The
# boards' --minimal preset turns both off, with TLS and the stats
# subcommand (docs/FOOTPRINT.md gives each preset's size).
option(WITH_STREAMS "Stream mode and replay" ON)
option(WITH_ENVELOPE "The json envelope and unwrap route options" ON)
foreach(_mrb_opt STREAMS ENVELOPE)
  if(WITH_${_mrb_opt})
    add_compile_definitions(MRB_WITH_${_mrb_opt}=1)
  else()
    add_compile_definitions(MRB_WITH_${_mrb_opt}=0)
    if(MRB_TESTS)
      message(FATAL_ERROR "WITH_${_mrb_opt}=OFF: the tests need a full build "
                          "(-DMRB_TESTS=OFF)")
    endif()
  endif()
endforeach()
set(MRB_CJSON_SOURCE_DIR "" CACHE PATH "cJSON sources (cJSON.c) for MRB_STATIC")

if(WITH_TLS)
  if(MRB_STATIC)
    set(OPENSSL_USE_STATIC_LIBS TRUE)
  endif()
  # Debian's Paho package config names OpenSSL::SSL in paho-mqtt3as' interface.
  find_package(OpenSSL REQUIRED)
  add_compile_definitions(MRB_WITH_TLS=1)
else()
  add_compile_definitions(MRB_WITH_TLS=0)
endif()

if(NOT MRB_STATIC)
  if(WITH_TLS)
    if(TARGET eclipse-paho-mqtt-c::paho-mqtt3as)
      set(MRB_PAHO eclipse-paho-mqtt-c::paho-mqtt3as OpenSSL::SSL)
    else()
      set(MRB_PAHO eclipse-paho-mqtt-c::paho-mqtt3as-static OpenSSL::SSL)
    endif()
  endif()
  return()
endif()

if(MRB_SANITIZE)
  message(FATAL_ERROR "MRB_STATIC and MRB_SANITIZE do not go together")
endif()
add_compile_options(-ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections)

# Static archives. The shared-library imported targets found above keep
# their names; their link interface is pointed at the archives instead.
if(WITH_TLS)
  set(_mrb_paho_a libpaho-mqtt3as.a)
else()
  set(_mrb_paho_a libpaho-mqtt3a.a)
endif()
find_library(MRB_PAHO_STATIC NAMES ${_mrb_paho_a})
find_library(MRB_HIREDIS_STATIC NAMES libhiredis.a)
find_library(MRB_CJSON_STATIC NAMES libcjson.a)
if(NOT MRB_PAHO_STATIC OR NOT MRB_HIREDIS_STATIC)
  message(FATAL_ERROR "MRB_STATIC: ${_mrb_paho_a} or libhiredis.a not found "
                      "(libpaho-mqtt-dev, libhiredis-dev)")
endif()
if(NOT MRB_CJSON_STATIC)
  if(NOT EXISTS "${MRB_CJSON_SOURCE_DIR}/cJSON.c")
    message(FATAL_ERROR "MRB_STATIC: no libcjson.a (Debian ships none); set "
                        "MRB_CJSON_SOURCE_DIR to a directory with cJSON.c "
                        "(boards/build.sh --static does)")
  endif()
  add_library(mrbcjson STATIC "${MRB_CJSON_SOURCE_DIR}/cJSON.c")
  # Not our code: build it as its upstream does, without our warnings.
  target_compile_options(mrbcjson PRIVATE -w)
  set(MRB_CJSON_STATIC mrbcjson)
endif()

set(MRB_PAHO mrbpaho_static)
add_library(mrbpaho_static INTERFACE)
target_link_libraries(mrbpaho_static INTERFACE ${MRB_PAHO_STATIC})
if(WITH_TLS)
  target_link_libraries(mrbpaho_static INTERFACE OpenSSL::SSL OpenSSL::Crypto)
endif()
target_link_libraries(mrbpaho_static INTERFACE Threads::Threads dl rt anl)
get_target_property(_mrb_paho_inc eclipse-paho-mqtt-c::paho-mqtt3a INTERFACE_INCLUDE_DIRECTORIES)
target_include_directories(mrbpaho_static INTERFACE ${_mrb_paho_inc})
set_target_properties(PkgConfig::HIREDIS PROPERTIES INTERFACE_LINK_LIBRARIES "${MRB_HIREDIS_STATIC}")
set_target_properties(PkgConfig::CJSON PROPERTIES INTERFACE_LINK_LIBRARIES "${MRB_CJSON_STATIC}")
# -static itself is set on the executable only (cmake/Install.cmake).
