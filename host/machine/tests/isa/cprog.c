/* A freestanding C program compiled by Debian's riscv64 gcc at -O2: integer, 128-bit,
 * floating-point and memory code as a compiler emits it. Each check compares with a
 * value computed independently (noted beside it); main returns the number of the first
 * failed check, 0 if all pass. */

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;

#define TOHOST ((volatile u64 *)0x40008000)

static void putc_(char c) { *TOHOST = (1ul << 56) | (1ul << 48) | (unsigned char)c; }
static void puts_(const char *s) { while (*s) putc_(*s++); }

void *memcpy(void *d, const void *s, u64 n) {
  char *dd = d; const char *ss = s;
  while (n--) *dd++ = *ss++;
  return d;
}
void *memset(void *d, int c, u64 n) {
  char *dd = d;
  while (n--) *dd++ = (char)c;
  return d;
}

static u64 fib(u64 n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static u64 fnv1a(const char *s) {
  u64 h = 0xcbf29ce484222325ul;
  while (*s) { h ^= (unsigned char)*s++; h *= 0x100000001b3ul; }
  return h;
}

static void sort(i64 *a, int n) {
  for (int i = 1; i < n; i++) {
    i64 v = a[i]; int j = i - 1;
    while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
    a[j + 1] = v;
  }
}

static double newton_sqrt(double x) {
  double r = x;
  for (int i = 0; i < 60; i++) r = 0.5 * (r + x / r);
  return r;
}

static volatile double vd = 2.0;
static volatile float vf = 10.0f;
static i64 arr[64];
static struct big { u64 a[9]; } b1, b2;

int main(void) {
  if (fib(20) != 6765) return 1;
  if (fnv1a("hello") != 0xa430d84680aabd0bul) return 2;  /* FNV-1a 64 reference value */
  u64 x = 0x123456789abcdefful;
  __uint128_t p = (__uint128_t)x * x;
  if ((u64)(p >> 64) != 0x14b66dc33f6acdeul) return 3;   /* python: (x*x) >> 64 */
  if ((u64)p != 0xc8042ab314c74201ul) return 4;
  u64 seed = 1;
  for (int i = 0; i < 64; i++) {
    seed = seed * 6364136223846793005ul + 1442695040888963407ul;
    arr[i] = (i64)seed >> 3;
  }
  sort(arr, 64);
  for (int i = 1; i < 64; i++) if (arr[i - 1] > arr[i]) return 5;
  double s = newton_sqrt(vd);
  union { double d; u64 u; } cv = { s };
  if (cv.u != 0x3ff6a09e667f3bccul) return 6;            /* the same iteration in host IEEE doubles */
  float f = vf / 3.0f;
  union { float f; u32 u; } fv = { f };
  if (fv.u != 0x40555555u) return 7;                     /* 10/3 in binary32 */
  if ((i64)(vd * -1e10) != -20000000000l) return 8;
  for (int i = 0; i < 9; i++) b1.a[i] = i * 3;
  b2 = b1;
  if (b2.a[8] != 24) return 9;
  i64 q = -7;
  if (q / 2 != -3 || q % 2 != -1 || (u64)q / 2 != 0x7ffffffffffffffcul) return 10;
  puts_("all C checks passed\n");
  return 0;
}
