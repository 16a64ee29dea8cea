// A minimal check harness for the plain C++ tests of csrc/ops/common (no test framework needed).
#pragma once

#include <cmath>
#include <cstdio>

namespace fastladder_test {

inline int& passed() { static int n = 0; return n; }
inline int& failed() { static int n = 0; return n; }

inline void check(bool ok, const char* what, const char* file, int line) {
  if (ok) {
    ++passed();
  } else {
    ++failed();
    std::printf("FAILED %s:%d: %s\n", file, line, what);
  }
}

inline int summary() {
  std::printf("%d passed, %d failed\n", passed(), failed());
  return failed() == 0 ? 0 : 1;
}

}  // namespace fastladder_test

#define CHECK(cond) ::fastladder_test::check((cond), #cond, __FILE__, __LINE__)
#define CHECK_NEAR(a, b, tol) ::fastladder_test::check(std::fabs((a) - (b)) <= (tol), #a " ~= " #b, __FILE__, __LINE__)
