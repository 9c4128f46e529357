# cpack -G DEB: one Debian package, `shmbus`, of everything `cmake --install` installs: the
# library, headers, CMake package and shmbus.pc, busd and busctl (in libexec/shmbus/, with
# bin/shmbus-busctl beside systemd's /usr/bin/busctl), the manual pages and busd@.service.
# Configure with -DCMAKE_INSTALL_PREFIX=/usr: the library finds busd at the configured
# prefix, so the package installs there (tests/package/run.sh builds it so).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME shmbus)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "shmbus developers <shmbus@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Kafka's programming model over shared memory on one machine")
set(CPACK_PACKAGE_DESCRIPTION
    "libshmbus (static, C++20) with its headers, CMake package and pkg-config file; busd, the bus daemon that
runs consumer groups and keeps committed offsets (libexec/shmbus/busd, busd@.service); and
shmbus-busctl, the operator's tool; and the Python module shmbus (confluent-kafka's API) when
it was built (SHMBUS_PYTHON).")
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
# The programs' shared libraries (libfmt9, libxxhash0, libstdc++6, ...) by dpkg-shlibdeps;
# a static libshmbus needs, to be linked, what its CMake package and shmbus.pc name.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libexpected-dev, libfmt-dev, libxxhash-dev")
if(SHMBUS_PYTHON)
  # The module is built for one Python ABI (its file name says which).
  math(EXPR _shmbus_py_next "${Python3_VERSION_MINOR} + 1")
  string(APPEND CPACK_DEBIAN_PACKAGE_DEPENDS
    ", python3 (>= ${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}), python3 (<< ${Python3_VERSION_MAJOR}.${_shmbus_py_next})")
endif()
include(CPack)
