/* With _GNU_SOURCE, glibc 2.38's and later headers turn strtol into __isoc23_strtol
   (symbol version GLIBC_2.38), which also reads C23's "0b" binary prefix; glibc 2.36's
   headers keep strtol (GLIBC_2.2.5 on x86_64), which stops at the "b". So what this
   returns for "0b101" tells which headers it was compiled against: 0 under the 2.36
   floor, 5 with the guest's own. */
#define _GNU_SOURCE
#include <stdlib.h>

long floor_parse(const char *text) { return strtol(text, NULL, 0); }
