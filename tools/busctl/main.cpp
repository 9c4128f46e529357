// busctl: the operator's tool. Only calls busctl_main() (tools/busctl/cli.cpp dispatches).
#include <iostream>

#include "tools/busctl/cli.h"

int main(int argc, char** argv) { return shmbus::busctl_main(argc, argv, std::cin, std::cout, std::cerr); }
