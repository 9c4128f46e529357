#include <iostream>

#include "bus/cli.h"

int main(int argc, char** argv) { return shmbus::busctl_main(argc, argv, std::cin, std::cout, std::cerr); }
