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
install(CODE "
  set(_link \"\$ENV{DESTDIR}${CMAKE_INSTALL_FULL_BINDIR}/${SHMBUS_BUSCTL_INSTALL_NAME}\")
  file(MAKE_DIRECTORY \"\$ENV{DESTDIR}${CMAKE_INSTALL_FULL_BINDIR}\")
  message(STATUS \"Installing: \${_link} -> ${_shmbus_busctl_target}\")
  file(CREATE_LINK \"${_shmbus_busctl_target}\" \"\${_link}\" SYMBOLIC)
")
