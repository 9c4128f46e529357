# cmake --install: the library, its public headers, the CMake package (shmbus::shmbus),
# shmbus.pc, and the programs. Included from the top CMakeLists.txt when SHMBUS_INSTALL.
include(CMakePackageConfigHelpers)

get_target_property(_shmbus_type shmbus_lib TYPE)
if(_shmbus_type STREQUAL "STATIC_LIBRARY")
  set(SHMBUS_STATIC ON)
else()
  set(SHMBUS_STATIC OFF)
endif()

install(TARGETS shmbus_lib EXPORT shmbusTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/shmbus DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(_shmbus_cmakedir ${CMAKE_INSTALL_LIBDIR}/cmake/shmbus)
install(EXPORT shmbusTargets NAMESPACE shmbus:: FILE shmbusTargets.cmake DESTINATION ${_shmbus_cmakedir})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/shmbusConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/shmbusConfig.cmake INSTALL_DESTINATION ${_shmbus_cmakedir}
  PATH_VARS CMAKE_INSTALL_LIBEXECDIR)
# 0.x: a minor version may change the API.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/shmbusConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/shmbusConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/shmbusConfigVersion.cmake
  DESTINATION ${_shmbus_cmakedir})

# pkg-config: a static libshmbus needs its dependencies on every link, so they are in
# Requires/Libs then; a shared one keeps them private.
if(SHMBUS_STATIC)
  set(SHMBUS_PC_REQUIRES "fmt libxxhash")
  set(SHMBUS_PC_REQUIRES_PRIVATE "")
  set(SHMBUS_PC_LIBS "-pthread -lrt")
  set(SHMBUS_PC_LIBS_PRIVATE "")
else()
  set(SHMBUS_PC_REQUIRES "")
  set(SHMBUS_PC_REQUIRES_PRIVATE "fmt libxxhash")
  set(SHMBUS_PC_LIBS "")
  set(SHMBUS_PC_LIBS_PRIVATE "-pthread -lrt")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/shmbus.pc.in ${CMAKE_CURRENT_BINARY_DIR}/shmbus.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/shmbus.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# busd is started on demand by the library (and by systemd units): <prefix>/libexec/shmbus/
# is where the library looks (docs/busd.md), and `busd` in bin/ could clash with other
# packages. busctl sits beside it, and bin/ gets a link under a name that does not collide
# with systemd's /usr/bin/busctl (nor shadow it from /usr/local/bin): shmbus-busctl.
install(TARGETS busd busctl RUNTIME DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/shmbus)
file(RELATIVE_PATH _shmbus_busctl_target ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_LIBEXECDIR}/shmbus/busctl)
# The prefix of the install itself (cpack installs into a staging prefix, without DESTDIR),
# never the configured one.
install(CODE "
  set(_link \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/${SHMBUS_BUSCTL_INSTALL_NAME}\")
  get_filename_component(_dir \"\${_link}\" DIRECTORY)
  file(MAKE_DIRECTORY \"\${_dir}\")
  message(STATUS \"Installing: \${_link} -> ${_shmbus_busctl_target}\")
  file(CREATE_LINK \"${_shmbus_busctl_target}\" \"\${_link}\" SYMBOLIC)
  list(APPEND CMAKE_INSTALL_MANIFEST_FILES \"\${_link}\")
")

# Manual pages from the programs' own command trees (tools/manpage.h), at build time.
set(_shmbus_man ${PROJECT_BINARY_DIR}/man)
add_custom_command(OUTPUT ${_shmbus_man}/shmbus-busctl.1 ${_shmbus_man}/busd.8
  COMMAND ${CMAKE_COMMAND} -DPROGRAM=$<TARGET_FILE:busctl> -DARGS=help-man -DOUT=${_shmbus_man}/shmbus-busctl.1
          -P ${CMAKE_CURRENT_LIST_DIR}/run_to_file.cmake
  COMMAND ${CMAKE_COMMAND} -DPROGRAM=$<TARGET_FILE:busd> -DARGS=--help-man -DOUT=${_shmbus_man}/busd.8
          -P ${CMAKE_CURRENT_LIST_DIR}/run_to_file.cmake
  DEPENDS busctl busd ${CMAKE_CURRENT_LIST_DIR}/run_to_file.cmake
  COMMENT "Generating the manual pages shmbus-busctl.1 and busd.8" VERBATIM)
add_custom_target(shmbus_man ALL DEPENDS ${_shmbus_man}/shmbus-busctl.1 ${_shmbus_man}/busd.8)
install(FILES ${_shmbus_man}/shmbus-busctl.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${_shmbus_man}/busd.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)

# systemd: busd@NAME.service runs busd for bus NAME (docs/busd.md). Relative to the prefix:
# /usr/lib/systemd/system for a package, /usr/local/lib/systemd/system for a local install
# (systemd reads both).
set(SHMBUS_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING "where busd@.service is installed (relative to the prefix)")
configure_file(${CMAKE_CURRENT_LIST_DIR}/busd@.service.in ${PROJECT_BINARY_DIR}/busd@.service @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/busd@.service DESTINATION ${SHMBUS_SYSTEMD_UNIT_DIR})
