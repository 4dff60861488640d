# SPDX-License-Identifier: Apache-2.0
# Extracts the C++ code snippets of a Markdown file into one translation unit
# (docs/index.md, "Code snippets", is the user-facing description of the convention).
#
# fulgur_docs_extract(<md> <display_name> <id> <out_cpp> <count_var>)
#   <md>            absolute path of the Markdown file
#   <display_name>  the path printed in messages (relative to the repository root)
#   <id>            a C identifier naming the file (namespaces and the driver function use it)
#   <out_cpp>       the translation unit to write; rewritten only when its content changes, so an
#                   edit elsewhere does not recompile every snippet
#   <count_var>     set to the number of compiled snippets (0: no TU is needed)
#
# A snippet is a fenced block opened by ```c++, ```cpp, ```cxx or ```cc. The last non-blank
# line before the fence may say what it is:
#   <!-- snippet: program -->          a complete program with `int main()`; compiled and run,
#                                      and it must return 0
#   <!-- snippet: fragment -->         statements; compiled as the body of a function, not run
#   <!-- snippet: declarations -->     namespace-scope declarations; compiled, not run
#   <!-- snippet: skip, <reason> -->   not compiled (the reason is required)
# Without a marker a snippet containing `main(` is a program and any other one a fragment.
# `#include` lines are moved to the top of the translation unit (every snippet of a file shares
# it); every other line keeps its place, under a #line directive, so a compiler error names the
# Markdown file and line. Each snippet lives in its own namespace. A malformed marker or an
# unterminated fence becomes an #error at that line: the build of the snippets fails.

function(_fulgur_docs_unescape out_var text)
  string(REPLACE "@FULGUR_SEMI@" ";" text "${text}")
  string(REPLACE "@FULGUR_LB@" "[" text "${text}")
  string(REPLACE "@FULGUR_RB@" "]" text "${text}")
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

function(fulgur_docs_extract md display_name id out_cpp count_var)
  file(READ "${md}" content)
  # CMake lists split on ';' and treat brackets specially: hide both while splitting into lines.
  string(REPLACE ";" "@FULGUR_SEMI@" content "${content}")
  string(REPLACE "[" "@FULGUR_LB@" content "${content}")
  string(REPLACE "]" "@FULGUR_RB@" content "${content}")
  string(REPLACE "\r" "" content "${content}")
  string(REPLACE "\n" ";" lines "${content}")

  set(includes "")       # hoisted #include lines (with their #line directives)
  set(bodies "")         # the snippets, each in its namespace
  set(calls "")          # driver calls of the programs
  set(count 0)
  set(lineno 0)
  set(in_block OFF)
  set(prev_nonblank "")
  set(prev_nonblank_line 0)
  foreach(line IN LISTS lines)
    math(EXPR lineno "${lineno} + 1")
    if(NOT in_block)
      if(line MATCHES "^[ ]*```[ ]*(c\\+\\+|cpp|cxx|cc|C\\+\\+|CPP)[ ]*$")
        set(in_block ON)
        set(block_start ${lineno})
        set(code "")
        set(code_lines 0)
        # The marker, if any, on the last non-blank line before the fence.
        set(kind "")
        set(marker_error "")
        if(prev_nonblank MATCHES "<!--[ ]*snippet[ ]*:")
          if(prev_nonblank MATCHES "^[ ]*<!--[ ]*snippet:[ ]*(program|fragment|declarations)[ ]*-->[ ]*$")
            set(kind "${CMAKE_MATCH_1}")
          elseif(prev_nonblank MATCHES "^[ ]*<!--[ ]*snippet:[ ]*skip[ ]*,[ ]*[^ ].*-->[ ]*$")
            set(kind "skip")
          else()
            set(marker_error "malformed snippet marker (want <!-- snippet: program|fragment|declarations|skip, reason -->)")
          endif()
        endif()
      elseif(NOT line STREQUAL "" AND NOT line MATCHES "^[ ]+$")
        set(prev_nonblank "${line}")
        set(prev_nonblank_line ${lineno})
      endif()
      continue()
    endif()

    # Inside a C++ block.
    if(NOT line MATCHES "^[ ]*```[ ]*$")
      list(APPEND block_lines_${block_start} "${lineno}")
      set(line_${lineno} "${line}")
      if(line MATCHES "main[ ]*\\(")
        set(has_main_${block_start} ON)
      endif()
      continue()
    endif()

    # The closing fence: emit the snippet.
    set(in_block OFF)
    set(prev_nonblank "")
    set(where "${display_name}:${block_start}")
    if(marker_error)
      string(APPEND bodies "#line ${prev_nonblank_line} \"${md}\"\n#error \"${marker_error}\"\n")
      math(EXPR count "${count} + 1")
      continue()
    endif()
    if(kind STREQUAL "")
      if(has_main_${block_start})
        set(kind program)
      else()
        set(kind fragment)
      endif()
    endif()
    if(kind STREQUAL "skip")
      continue()
    endif()
    math(EXPR count "${count} + 1")
    set(ns "fulgur_docs_${id}_${block_start}")
    set(code "")
    set(next_expected 0)
    foreach(n IN LISTS block_lines_${block_start})
      set(l "${line_${n}}")
      if(l MATCHES "^[ ]*#[ ]*include[ ]")
        string(APPEND includes "#line ${n} \"${md}\"\n${l}\n")
        set(next_expected 0)
        continue()
      endif()
      if(NOT n EQUAL next_expected)
        string(APPEND code "#line ${n} \"${md}\"\n")
      endif()
      string(APPEND code "${l}\n")
      math(EXPR next_expected "${n} + 1")
    endforeach()
    if(kind STREQUAL "program")
      string(APPEND bodies "// ${where}: program\n#define main snippet_main\nnamespace ${ns} {\n${code}}  // namespace ${ns}\n#undef main\n\n")
      string(APPEND calls "  failures += fulgur_docs_run_one(\"${where}\", &${ns}::snippet_main);\n")
    elseif(kind STREQUAL "fragment")
      string(APPEND bodies "// ${where}: fragment\nnamespace ${ns} {\n[[maybe_unused]] void snippet_fragment() {\n${code}}\n}  // namespace ${ns}\n\n")
    else()
      string(APPEND bodies "// ${where}: declarations\nnamespace ${ns} {\n${code}}  // namespace ${ns}\n\n")
    endif()
  endforeach()
  if(in_block)
    string(APPEND bodies "#line ${block_start} \"${md}\"\n#error \"unterminated code fence\"\n")
    math(EXPR count "${count} + 1")
  endif()

  _fulgur_docs_unescape(includes "${includes}")
  _fulgur_docs_unescape(bodies "${bodies}")
  set(tu "// Generated from ${display_name} by tests/docs/snippets.cmake; edit the Markdown instead.\n")
  string(APPEND tu "#include \"docs_snippet_prelude.hpp\"\n${includes}\n${bodies}")
  string(APPEND tu "int fulgur_docs_run_${id}() {\n  int failures = 0;\n${calls}  return failures;\n}\n")
  file(WRITE "${out_cpp}.tmp" "${tu}")
  configure_file("${out_cpp}.tmp" "${out_cpp}" COPYONLY)
  set(${count_var} ${count} PARENT_SCOPE)
endfunction()
