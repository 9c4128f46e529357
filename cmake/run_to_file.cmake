# cmake -DPROGRAM=... -DARGS=... -DOUT=... -P run_to_file.cmake: runs PROGRAM ARGS with stdout
# into OUT, failing the build (and leaving no OUT) if it fails. No shell redirection, which
# add_custom_command does not promise.
get_filename_component(_dir ${OUT} DIRECTORY)
file(MAKE_DIRECTORY ${_dir})
execute_process(COMMAND ${PROGRAM} ${ARGS} OUTPUT_FILE ${OUT}.tmp RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.tmp)
  message(FATAL_ERROR "${PROGRAM} ${ARGS} failed: ${rc}")
endif()
file(RENAME ${OUT}.tmp ${OUT})
