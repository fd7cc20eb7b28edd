/*
 * ykt_smp11: a small PKCS#11 v2.40 module offering the Chinese national algorithms (SM4, SM3,
 * SM2) over OpenSSL 3's default provider, for Yikatong's tests and demo ONLY.
 *
 * No installable token offers SM4 (SoftHSM2 has no SM mechanism; PKCS#11 v2.40 defines none), so
 * this module stands in for a vendor HSM the way the card emulator stands in for a chip: the
 * project reaches it only through PKCS#11 calls (python-pkcs11 and the same ctypes fast path as
 * for SoftHSM2), keys are generated, derived or unwrapped inside it and a sensitive key's value
 * is never returned (C_GetAttributeValue(CKA_VALUE) -> CKR_ATTRIBUTE_SENSITIVE). It is not an
 * HSM: the keys live in this process's memory and, encrypted under a key unlocked by the PIN,
 * in a file.
 *
 * Mechanism numbers are vendor-defined (0x80000000 | ...) and differ by vendor: this module
 * offers exactly the mechanisms its configuration file names (written by hsm/vendors.py from
 * the per-vendor table chosen by the [hsm] vendor setting), nothing else:
 *
 *   store = /path/to/dir                 token file <dir>/token.bin
 *   keytype.sm4 = 0x80050001              keytype.sm2 = 0x80050002
 *   mech.sm4_keygen = ...   mech.sm4_ecb = ...   mech.sm4_cbc = ...
 *   mech.sm4_ecb_encrypt_data = ...      (C_DeriveKey: value = SM4-ECB(base, data))
 *   mech.sm2_keygen = ...   mech.sm2_sm3_sign = ...  (SM2 with SM3 and the user identity,
 *                                                     default "1234567812345678"; r||s)
 *   mech.sm3 = ...
 *
 * The configuration file is named by YKT_SMP11_CONF. Headers: p11-kit's pkcs11.h (Debian
 * libp11-kit-dev), which follows the OASIS PKCS#11 v2.40 specification.
 *
 * Token file: magic, label, salts and PIN check values (PBKDF2-HMAC-SM3, 20,000 iterations),
 * the store key K (random, 16 bytes) SM4-ECB-encrypted under the SO's and the user's PIN keys,
 * then the token objects SM4-CBC-encrypted under K with an HMAC-SM3 under K. Objects are read at
 * C_Login and re-read under an flock whenever another process changed the file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>

#define MAX_SESSIONS 64
#define MAX_OBJECTS 4096
#define MAX_ATTRS 40
#define SESSION_OBJECT_BASE 0x40000000UL
#define PBKDF2_ITER 20000
#define MAGIC "YKTSMP11v1"

enum mech_id { M_SM4_KEYGEN, M_SM4_ECB, M_SM4_CBC, M_SM4_DERIVE, M_SM2_KEYGEN, M_SM2_SIGN, M_SM3, M_COUNT };
static const char *MECH_NAMES[M_COUNT] = {"sm4_keygen", "sm4_ecb", "sm4_cbc", "sm4_ecb_encrypt_data",
                                          "sm2_keygen", "sm2_sm3_sign", "sm3"};

typedef struct {
  CK_ATTRIBUTE_TYPE type;
  CK_ULONG len;
  unsigned char *value;
} attr_t;

typedef struct {
  int used;
  CK_OBJECT_HANDLE handle;
  int token;
  CK_ULONG n;
  attr_t a[MAX_ATTRS];
} object_t;

enum op_kind { OP_NONE, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST, OP_SIGN, OP_VERIFY };

typedef struct {
  int used;
  CK_FLAGS flags;
  int op;
  CK_MECHANISM_TYPE mech;
  CK_OBJECT_HANDLE key;
  unsigned char iv[16];
  unsigned char id[64];
  CK_ULONG id_len;
  CK_OBJECT_HANDLE *found;
  CK_ULONG found_n, found_pos;
  int finding;
} session_t;

static pthread_mutex_t LOCKM = PTHREAD_MUTEX_INITIALIZER;
static int initialised;
static CK_MECHANISM_TYPE mechs[M_COUNT];
static int offered[M_COUNT];
static CK_KEY_TYPE ckk_sm4 = (CK_KEY_TYPE)-1, ckk_sm2 = (CK_KEY_TYPE)-1;
static char store_dir[520];
static session_t sessions[MAX_SESSIONS + 1];
static object_t objects[MAX_OBJECTS];
static CK_OBJECT_HANDLE next_session_handle = SESSION_OBJECT_BASE;
static CK_USER_TYPE logged_in = (CK_USER_TYPE)-1; /* CKU_SO / CKU_USER */
static unsigned char store_key[16];
static int have_store_key;
static struct timespec loaded_mtime;
static ino_t loaded_ino;
static off_t loaded_size;
static void pkey_cache_clear(void);

/* --- token file header ------------------------------------------------------------------ */
typedef struct {
  char magic[12];
  unsigned char label[32];
  uint32_t user_set;
  unsigned char so_salt[16], so_check[16], so_wrapped[16];
  unsigned char us_salt[16], us_check[16], us_wrapped[16];
  uint32_t next_id;
} header_t;

static header_t hdr;
static int have_hdr;

static void store_path(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", store_dir, name); }

/* --- helpers ---------------------------------------------------------------------------- */
static int sm4_ecb(const unsigned char *key, const unsigned char *in, size_t len, unsigned char *out, int enc) {
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int ok = 0, l1 = 0, l2 = 0;
  if (c && EVP_CipherInit_ex(c, EVP_sm4_ecb(), NULL, key, NULL, enc) && EVP_CIPHER_CTX_set_padding(c, 0) &&
      EVP_CipherUpdate(c, out, &l1, in, (int)len) && EVP_CipherFinal_ex(c, out + l1, &l2))
    ok = (size_t)(l1 + l2) == len;
  EVP_CIPHER_CTX_free(c);
  return ok;
}

static int sm4_cbc(const unsigned char *key, const unsigned char *iv, const unsigned char *in, size_t len,
                   unsigned char *out, int enc) {
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int ok = 0, l1 = 0, l2 = 0;
  if (c && EVP_CipherInit_ex(c, EVP_sm4_cbc(), NULL, key, iv, enc) && EVP_CIPHER_CTX_set_padding(c, 0) &&
      EVP_CipherUpdate(c, out, &l1, in, (int)len) && EVP_CipherFinal_ex(c, out + l1, &l2))
    ok = (size_t)(l1 + l2) == len;
  EVP_CIPHER_CTX_free(c);
  return ok;
}

static void pin_key(const unsigned char *pin, CK_ULONG pin_len, const unsigned char *salt, unsigned char kek[16],
                    unsigned char check[16]) {
  unsigned char dk[32], h[32];
  unsigned int hl = 0;
  PKCS5_PBKDF2_HMAC((const char *)pin, (int)pin_len, salt, 16, PBKDF2_ITER, EVP_sm3(), 32, dk);
  memcpy(kek, dk, 16);
  EVP_Digest(dk + 16, 16, h, &hl, EVP_sm3(), NULL);
  memcpy(check, h, 16);
  OPENSSL_cleanse(dk, sizeof dk);
}

static attr_t *find_attr(object_t *o, CK_ATTRIBUTE_TYPE t) {
  for (CK_ULONG i = 0; i < o->n; i++)
    if (o->a[i].type == t) return &o->a[i];
  return NULL;
}

static CK_RV set_attr(object_t *o, CK_ATTRIBUTE_TYPE t, const void *v, CK_ULONG len) {
  attr_t *a = find_attr(o, t);
  if (!a) {
    if (o->n >= MAX_ATTRS) return CKR_TEMPLATE_INCONSISTENT;
    a = &o->a[o->n++];
    a->type = t;
    a->value = NULL;
  } else {
    if (a->value) OPENSSL_clear_free(a->value, a->len);
  }
  a->value = OPENSSL_malloc(len ? len : 1);
  if (!a->value) return CKR_HOST_MEMORY;
  if (len) memcpy(a->value, v, len);
  a->len = len;
  return CKR_OK;
}

static CK_RV set_bool(object_t *o, CK_ATTRIBUTE_TYPE t, CK_BBOOL b) { return set_attr(o, t, &b, 1); }
static CK_RV set_ulong(object_t *o, CK_ATTRIBUTE_TYPE t, CK_ULONG v) { return set_attr(o, t, &v, sizeof v); }

static int get_bool(object_t *o, CK_ATTRIBUTE_TYPE t, int dflt) {
  attr_t *a = find_attr(o, t);
  return a && a->len == 1 ? a->value[0] != 0 : dflt;
}

static CK_ULONG get_ulong(object_t *o, CK_ATTRIBUTE_TYPE t, CK_ULONG dflt) {
  attr_t *a = find_attr(o, t);
  CK_ULONG v;
  if (!a || a->len != sizeof v) return dflt;
  memcpy(&v, a->value, sizeof v);
  return v;
}

static void free_object(object_t *o) {
  for (CK_ULONG i = 0; i < o->n; i++) OPENSSL_clear_free(o->a[i].value, o->a[i].len);
  memset(o, 0, sizeof *o);
}

static object_t *new_object(void) {
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (!objects[i].used) {
      memset(&objects[i], 0, sizeof objects[i]);
      objects[i].used = 1;
      return &objects[i];
    }
  return NULL;
}

static object_t *get_object(CK_OBJECT_HANDLE h) {
  if (!h) return NULL;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].handle == h) return &objects[i];
  return NULL;
}

static CK_RV apply_template(object_t *o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  for (CK_ULONG i = 0; i < n; i++) {
    if (t[i].type == CKA_VALUE_LEN && get_ulong(o, CKA_CLASS, 0) != CKO_SECRET_KEY) continue;
    CK_RV rv = set_attr(o, t[i].type, t[i].pValue, t[i].ulValueLen);
    if (rv) return rv;
  }
  return CKR_OK;
}

static int is_secret(object_t *o) {
  CK_ULONG cls = get_ulong(o, CKA_CLASS, (CK_ULONG)-1);
  if (cls == CKO_PRIVATE_KEY) return 1;
  if (cls == CKO_SECRET_KEY) return get_bool(o, CKA_SENSITIVE, 1) || !get_bool(o, CKA_EXTRACTABLE, 0);
  return 0;
}

/* --- token file ------------------------------------------------------------------------- */
static int lock_store(void) {
  char p[600];
  store_path(p, sizeof p, "token.lock");
  int fd = open(p, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) flock(fd, LOCK_EX);
  return fd;
}

static void unlock_store(int fd) {
  if (fd >= 0) {
    flock(fd, LOCK_UN);
    close(fd);
  }
}

static int read_header(void) {
  char p[600];
  store_path(p, sizeof p, "token.bin");
  FILE *f = fopen(p, "rb");
  if (!f) return 0;
  int ok = fread(&hdr, sizeof hdr, 1, f) == 1 && memcmp(hdr.magic, MAGIC, sizeof MAGIC - 1) == 0;
  fclose(f);
  have_hdr = ok;
  return ok;
}

static void put_u32(unsigned char **p, uint32_t v) { memcpy(*p, &v, 4); *p += 4; }

/* Serialise token objects, encrypt under K, write atomically (caller holds the flock). */
static CK_RV write_store(void) {
  size_t cap = 64, len = 0;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].token) {
      cap += 12;
      for (CK_ULONG j = 0; j < objects[i].n; j++) cap += 8 + objects[i].a[j].len;
    }
  cap += 16;
  unsigned char *plain = OPENSSL_zalloc(cap), *q = plain;
  if (!plain) return CKR_HOST_MEMORY;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].token) {
      put_u32(&q, (uint32_t)objects[i].handle);
      put_u32(&q, (uint32_t)objects[i].n);
      for (CK_ULONG j = 0; j < objects[i].n; j++) {
        put_u32(&q, (uint32_t)objects[i].a[j].type);
        put_u32(&q, (uint32_t)objects[i].a[j].len);
        memcpy(q, objects[i].a[j].value, objects[i].a[j].len);
        q += objects[i].a[j].len;
      }
    }
  put_u32(&q, 0); /* end marker */
  len = (size_t)(q - plain);
  size_t padded = (len + 16) / 16 * 16;
  memset(plain + len, 0, padded - len);
  plain[len] = 0x80;
  unsigned char iv[16], mac[32];
  unsigned int ml = 0;
  RAND_bytes(iv, 16);
  unsigned char *ct = OPENSSL_malloc(padded);
  CK_RV rv = CKR_OK;
  if (!ct || !sm4_cbc(store_key, iv, plain, padded, ct, 1)) rv = CKR_GENERAL_ERROR;
  OPENSSL_clear_free(plain, cap);
  if (rv) { OPENSSL_free(ct); return rv; }
  unsigned char macin_key[16];
  sm4_ecb(store_key, (const unsigned char *)"mac-key-ykt-sm\x00\x01", 16, macin_key, 1);
  HMAC(EVP_sm3(), macin_key, 16, ct, padded, mac, &ml);
  OPENSSL_cleanse(macin_key, 16);
  char p[600], tmp[620];
  store_path(p, sizeof p, "token.bin");
  snprintf(tmp, sizeof tmp, "%s.tmp", p);
  FILE *f = fopen(tmp, "wb");
  uint32_t n32 = (uint32_t)padded;
  if (!f || fwrite(&hdr, sizeof hdr, 1, f) != 1 || fwrite(iv, 16, 1, f) != 1 || fwrite(&n32, 4, 1, f) != 1 ||
      fwrite(ct, padded, 1, f) != 1 || fwrite(mac, 32, 1, f) != 1)
    rv = CKR_DEVICE_ERROR;
  if (f && fclose(f) != 0) rv = CKR_DEVICE_ERROR;
  OPENSSL_free(ct);
  if (!rv && rename(tmp, p) != 0) rv = CKR_DEVICE_ERROR;
  struct stat st;
  if (!rv && stat(p, &st) == 0) {
    loaded_mtime = st.st_mtim;
    loaded_ino = st.st_ino;
    loaded_size = st.st_size;
  }
  return rv;
}

static uint32_t get_u32(const unsigned char **p) { uint32_t v; memcpy(&v, *p, 4); *p += 4; return v; }

/* Read the token objects (caller holds the flock, K known). */
static CK_RV read_store(void) {
  char p[600];
  store_path(p, sizeof p, "token.bin");
  FILE *f = fopen(p, "rb");
  if (!f) return CKR_TOKEN_NOT_RECOGNIZED;
  struct stat st;
  fstat(fileno(f), &st);
  header_t h;
  unsigned char iv[16], mac[32], mac2[32];
  uint32_t n32 = 0;
  CK_RV rv = CKR_OK;
  if (fread(&h, sizeof h, 1, f) != 1 || fread(iv, 16, 1, f) != 1 || fread(&n32, 4, 1, f) != 1 || n32 % 16 ||
      n32 > (64u << 20)) {
    fclose(f);
    return CKR_TOKEN_NOT_RECOGNIZED;
  }
  unsigned char *ct = OPENSSL_malloc(n32 ? n32 : 1), *plain = OPENSSL_malloc(n32 ? n32 : 1);
  if (!ct || !plain || fread(ct, n32, 1, f) != 1 || fread(mac, 32, 1, f) != 1) rv = CKR_TOKEN_NOT_RECOGNIZED;
  fclose(f);
  if (!rv) {
    unsigned int ml = 0;
    unsigned char mk[16];
    sm4_ecb(store_key, (const unsigned char *)"mac-key-ykt-sm\x00\x01", 16, mk, 1);
    HMAC(EVP_sm3(), mk, 16, ct, n32, mac2, &ml);
    OPENSSL_cleanse(mk, 16);
    if (CRYPTO_memcmp(mac, mac2, 32) != 0 || !sm4_cbc(store_key, iv, ct, n32, plain, 0)) rv = CKR_TOKEN_NOT_RECOGNIZED;
  }
  if (!rv) {
    hdr = h;
    for (int i = 0; i < MAX_OBJECTS; i++)
      if (objects[i].used && objects[i].token) free_object(&objects[i]);
    const unsigned char *q = plain, *end = plain + n32;
    while (q + 4 <= end) {
      uint32_t handle = get_u32(&q);
      if (!handle) break;
      object_t *o = new_object();
      if (!o || q + 4 > end) { rv = CKR_DEVICE_MEMORY; break; }
      o->handle = handle;
      o->token = 1;
      uint32_t n = get_u32(&q);
      for (uint32_t j = 0; j < n && q + 8 <= end; j++) {
        uint32_t t = get_u32(&q), l = get_u32(&q);
        if (q + l > end) { rv = CKR_TOKEN_NOT_RECOGNIZED; break; }
        set_attr(o, t, q, l);
        q += l;
      }
    }
    loaded_mtime = st.st_mtim;
    loaded_ino = st.st_ino;
    loaded_size = st.st_size;
  }
  if (plain) OPENSSL_clear_free(plain, n32 ? n32 : 1);
  OPENSSL_free(ct);
  return rv;
}

/* Re-read the token objects if another process rewrote the file (caller holds the flock). */
static CK_RV refresh_store(void) {
  if (!have_store_key) return CKR_OK;
  char p[600];
  struct stat st;
  store_path(p, sizeof p, "token.bin");
  if (stat(p, &st) != 0) return CKR_TOKEN_NOT_RECOGNIZED;
  if (st.st_ino == loaded_ino && st.st_size == loaded_size && st.st_mtim.tv_sec == loaded_mtime.tv_sec &&
      st.st_mtim.tv_nsec == loaded_mtime.tv_nsec)
    return CKR_OK;
  return read_store();
}

/* --- configuration ---------------------------------------------------------------------- */
static CK_RV load_config(void) {
  const char *path = getenv("YKT_SMP11_CONF");
  memset(offered, 0, sizeof offered);
  if (!path) return CKR_GENERAL_ERROR;
  FILE *f = fopen(path, "r");
  if (!f) return CKR_GENERAL_ERROR;
  char line[700];
  store_dir[0] = 0;
  while (fgets(line, sizeof line, f)) {
    char key[128], val[520];
    if (line[0] == '#' || sscanf(line, " %127[^= ] = %519s", key, val) != 2) continue;
    if (!strcmp(key, "store")) snprintf(store_dir, sizeof store_dir, "%s", val);
    else if (!strcmp(key, "keytype.sm4")) ckk_sm4 = strtoul(val, NULL, 0);
    else if (!strcmp(key, "keytype.sm2")) ckk_sm2 = strtoul(val, NULL, 0);
    else if (!strncmp(key, "mech.", 5))
      for (int m = 0; m < M_COUNT; m++)
        if (!strcmp(key + 5, MECH_NAMES[m])) {
          mechs[m] = strtoul(val, NULL, 0);
          offered[m] = 1;
        }
  }
  fclose(f);
  return store_dir[0] ? CKR_OK : CKR_GENERAL_ERROR;
}

static int mech_of(CK_MECHANISM_TYPE t) {
  for (int m = 0; m < M_COUNT; m++)
    if (offered[m] && mechs[m] == t) return m;
  return -1;
}

/* --- general ---------------------------------------------------------------------------- */
#define ENTER()                                        \
  pthread_mutex_lock(&LOCKM);                          \
  if (!initialised) {                                  \
    pthread_mutex_unlock(&LOCKM);                      \
    return CKR_CRYPTOKI_NOT_INITIALIZED;               \
  }
#define LEAVE(rv)                                      \
  do {                                                 \
    CK_RV _r = (rv);                                   \
    pthread_mutex_unlock(&LOCKM);                      \
    return _r;                                         \
  } while (0)

static session_t *get_session(CK_SESSION_HANDLE h) {
  if (h < 1 || h > MAX_SESSIONS || !sessions[h].used) return NULL;
  return &sessions[h];
}

static void padfield(unsigned char *dst, size_t n, const char *src) {
  memset(dst, ' ', n);
  memcpy(dst, src, strnlen(src, n));
}

CK_RV C_Initialize(CK_VOID_PTR args) {
  (void)args;
  pthread_mutex_lock(&LOCKM);
  if (initialised) LEAVE(CKR_CRYPTOKI_ALREADY_INITIALIZED);
  CK_RV rv = load_config();
  if (rv == CKR_OK) {
    initialised = 1;
    read_header();
  }
  LEAVE(rv);
}

CK_RV C_Finalize(CK_VOID_PTR r) {
  (void)r;
  ENTER();
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used) free_object(&objects[i]);
  pkey_cache_clear();
  for (int i = 0; i <= MAX_SESSIONS; i++) {
    free(sessions[i].found);
    memset(&sessions[i], 0, sizeof sessions[i]);
  }
  OPENSSL_cleanse(store_key, sizeof store_key);
  have_store_key = 0;
  logged_in = (CK_USER_TYPE)-1;
  initialised = 0;
  memset(&loaded_mtime, 0, sizeof loaded_mtime);
  loaded_ino = 0;
  loaded_size = 0;
  LEAVE(CKR_OK);
}

CK_RV C_GetInfo(CK_INFO_PTR info) {
  if (!info) return CKR_ARGUMENTS_BAD;
  memset(info, 0, sizeof *info);
  info->cryptokiVersion.major = 2;
  info->cryptokiVersion.minor = 40;
  padfield(info->manufacturerID, 32, "Yikatong (test module)");
  padfield(info->libraryDescription, 32, "SM2/SM3/SM4 over OpenSSL 3");
  info->libraryVersion.major = 1;
  return CKR_OK;
}

CK_RV C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  (void)present;
  if (!count) return CKR_ARGUMENTS_BAD;
  if (list) {
    if (*count < 1) { *count = 1; return CKR_BUFFER_TOO_SMALL; }
    list[0] = 0;
  }
  *count = 1;
  return CKR_OK;
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!info) return CKR_ARGUMENTS_BAD;
  memset(info, 0, sizeof *info);
  padfield(info->slotDescription, 64, "Yikatong SM test slot");
  padfield(info->manufacturerID, 32, "Yikatong (test module)");
  info->flags = CKF_TOKEN_PRESENT;
  return CKR_OK;
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!info) return CKR_ARGUMENTS_BAD;
  ENTER();
  read_header();
  memset(info, 0, sizeof *info);
  if (have_hdr) memcpy(info->label, hdr.label, 32);
  else padfield(info->label, 32, "");
  padfield(info->manufacturerID, 32, "Yikatong SM test module");
  padfield(info->model, 16, "ykt-smp11");
  padfield(info->serialNumber, 16, "0001");
  info->flags = CKF_RNG | CKF_LOGIN_REQUIRED | (have_hdr ? CKF_TOKEN_INITIALIZED : 0) |
                (have_hdr && hdr.user_set ? CKF_USER_PIN_INITIALIZED : 0);
  info->ulMaxSessionCount = MAX_SESSIONS;
  info->ulMaxRwSessionCount = MAX_SESSIONS;
  info->ulMaxPinLen = 64;
  info->ulMinPinLen = 4;
  info->ulTotalPublicMemory = info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulTotalPrivateMemory = info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->hardwareVersion.major = 1;
  info->firmwareVersion.major = 1;
  LEAVE(CKR_OK);
}

CK_RV C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!count) return CKR_ARGUMENTS_BAD;
  ENTER();
  CK_ULONG n = 0;
  for (int m = 0; m < M_COUNT; m++) n += offered[m];
  if (list) {
    if (*count < n) { *count = n; LEAVE(CKR_BUFFER_TOO_SMALL); }
    CK_ULONG i = 0;
    for (int m = 0; m < M_COUNT; m++)
      if (offered[m]) list[i++] = mechs[m];
  }
  *count = n;
  LEAVE(CKR_OK);
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!info) return CKR_ARGUMENTS_BAD;
  ENTER();
  int m = mech_of(type);
  if (m < 0) LEAVE(CKR_MECHANISM_INVALID);
  static const CK_FLAGS F[M_COUNT] = {CKF_GENERATE, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP,
                                      CKF_ENCRYPT | CKF_DECRYPT, CKF_DERIVE, CKF_GENERATE_KEY_PAIR,
                                      CKF_SIGN | CKF_VERIFY, CKF_DIGEST};
  info->ulMinKeySize = m >= M_SM2_KEYGEN && m <= M_SM2_SIGN ? 256 : 128;
  info->ulMaxKeySize = info->ulMinKeySize;
  info->flags = F[m] | CKF_HW;
  LEAVE(CKR_OK);
}

/* C_InitToken: a new, empty token with a fresh store key K (every object of a previous token
   is lost, as PKCS#11 specifies). */
CK_RV C_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!pin || !label || pin_len < 4) return CKR_PIN_LEN_RANGE;
  ENTER();
  for (int i = 1; i <= MAX_SESSIONS; i++)
    if (sessions[i].used) LEAVE(CKR_SESSION_EXISTS);
  mkdir(store_dir, 0700);
  int fd = lock_store();
  memset(&hdr, 0, sizeof hdr);
  memcpy(hdr.magic, MAGIC, sizeof MAGIC - 1);
  memcpy(hdr.label, label, 32);
  hdr.next_id = 1;
  unsigned char kek[16];
  RAND_bytes(store_key, 16);
  RAND_bytes(hdr.so_salt, 16);
  pin_key(pin, pin_len, hdr.so_salt, kek, hdr.so_check);
  sm4_ecb(kek, store_key, 16, hdr.so_wrapped, 1);
  OPENSSL_cleanse(kek, 16);
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used) free_object(&objects[i]);
  have_hdr = 1;
  CK_RV rv = write_store();
  OPENSSL_cleanse(store_key, 16);
  unlock_store(fd);
  LEAVE(rv);
}

CK_RV C_InitPIN(CK_SESSION_HANDLE sh, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  ENTER();
  if (!get_session(sh)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (logged_in != CKU_SO) LEAVE(CKR_USER_NOT_LOGGED_IN);
  if (!pin || pin_len < 4) LEAVE(CKR_PIN_LEN_RANGE);
  int fd = lock_store();
  CK_RV rv = refresh_store();
  if (!rv) {
    unsigned char kek[16];
    RAND_bytes(hdr.us_salt, 16);
    pin_key(pin, pin_len, hdr.us_salt, kek, hdr.us_check);
    sm4_ecb(kek, store_key, 16, hdr.us_wrapped, 1);
    OPENSSL_cleanse(kek, 16);
    hdr.user_set = 1;
    rv = write_store();
  }
  unlock_store(fd);
  LEAVE(rv);
}

CK_RV C_SetPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR o, CK_ULONG ol, CK_UTF8CHAR_PTR n, CK_ULONG nl) {
  (void)s; (void)o; (void)ol; (void)n; (void)nl;
  return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR out) {
  (void)app; (void)notify;
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  if (!out) return CKR_ARGUMENTS_BAD;
  ENTER();
  if (!read_header()) LEAVE(CKR_TOKEN_NOT_RECOGNIZED);
  for (CK_SESSION_HANDLE h = 1; h <= MAX_SESSIONS; h++)
    if (!sessions[h].used) {
      memset(&sessions[h], 0, sizeof sessions[h]);
      sessions[h].used = 1;
      sessions[h].flags = flags;
      *out = h;
      LEAVE(CKR_OK);
    }
  LEAVE(CKR_SESSION_COUNT);
}

static void close_one(CK_SESSION_HANDLE h) {
  free(sessions[h].found);
  memset(&sessions[h], 0, sizeof sessions[h]);
}

static void drop_session_objects_if_idle(void) {
  for (int i = 1; i <= MAX_SESSIONS; i++)
    if (sessions[i].used) return;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && !objects[i].token) free_object(&objects[i]);
  logged_in = (CK_USER_TYPE)-1;
  OPENSSL_cleanse(store_key, 16);
  have_store_key = 0;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used) free_object(&objects[i]);
}

CK_RV C_CloseSession(CK_SESSION_HANDLE h) {
  ENTER();
  if (!get_session(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  close_one(h);
  drop_session_objects_if_idle();
  LEAVE(CKR_OK);
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slot) {
  if (slot != 0) return CKR_SLOT_ID_INVALID;
  ENTER();
  for (int i = 1; i <= MAX_SESSIONS; i++)
    if (sessions[i].used) close_one(i);
  drop_session_objects_if_idle();
  LEAVE(CKR_OK);
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!info) LEAVE(CKR_ARGUMENTS_BAD);
  info->slotID = 0;
  info->flags = s->flags;
  info->ulDeviceError = 0;
  int rw = (s->flags & CKF_RW_SESSION) != 0;
  info->state = logged_in == CKU_USER ? (rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS)
                : logged_in == CKU_SO ? CKS_RW_SO_FUNCTIONS
                                      : (rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION);
  LEAVE(CKR_OK);
}

CK_RV C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  ENTER();
  if (!get_session(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (user != CKU_USER && user != CKU_SO) LEAVE(CKR_USER_TYPE_INVALID);
  if (logged_in == user) LEAVE(CKR_USER_ALREADY_LOGGED_IN);
  if (logged_in != (CK_USER_TYPE)-1) LEAVE(CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  if (!pin) LEAVE(CKR_ARGUMENTS_BAD);
  int fd = lock_store();
  if (!read_header()) { unlock_store(fd); LEAVE(CKR_TOKEN_NOT_RECOGNIZED); }
  if (user == CKU_USER && !hdr.user_set) { unlock_store(fd); LEAVE(CKR_USER_PIN_NOT_INITIALIZED); }
  unsigned char kek[16], check[16];
  pin_key(pin, pin_len, user == CKU_SO ? hdr.so_salt : hdr.us_salt, kek, check);
  if (CRYPTO_memcmp(check, user == CKU_SO ? hdr.so_check : hdr.us_check, 16) != 0) {
    OPENSSL_cleanse(kek, 16);
    unlock_store(fd);
    LEAVE(CKR_PIN_INCORRECT);
  }
  sm4_ecb(kek, user == CKU_SO ? hdr.so_wrapped : hdr.us_wrapped, 16, store_key, 0);
  OPENSSL_cleanse(kek, 16);
  have_store_key = 1;
  CK_RV rv = read_store();
  unlock_store(fd);
  if (rv) {
    OPENSSL_cleanse(store_key, 16);
    have_store_key = 0;
    LEAVE(rv);
  }
  logged_in = user;
  LEAVE(CKR_OK);
}

CK_RV C_Logout(CK_SESSION_HANDLE h) {
  ENTER();
  if (!get_session(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (logged_in == (CK_USER_TYPE)-1) LEAVE(CKR_USER_NOT_LOGGED_IN);
  logged_in = (CK_USER_TYPE)-1;
  OPENSSL_cleanse(store_key, 16);
  have_store_key = 0;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used) free_object(&objects[i]);
  LEAVE(CKR_OK);
}

/* --- objects ---------------------------------------------------------------------------- */
/* Give the object its handle; token objects are written to the file (flock held inside). */
static CK_RV commit_object(object_t *o, CK_OBJECT_HANDLE_PTR out) {
  o->token = get_bool(o, CKA_TOKEN, 0);
  set_bool(o, CKA_TOKEN, (CK_BBOOL)o->token);
  if (!o->token) {
    o->handle = next_session_handle++;
    *out = o->handle;
    return CKR_OK;
  }
  int fd = lock_store();
  object_t copy = *o; /* refresh may reuse the slot: keep the attributes aside */
  o->used = 0;
  CK_RV rv = refresh_store();
  object_t *n = rv ? NULL : new_object();
  if (!n) {
    for (CK_ULONG i = 0; i < copy.n; i++) OPENSSL_clear_free(copy.a[i].value, copy.a[i].len);
    unlock_store(fd);
    return rv ? rv : CKR_DEVICE_MEMORY;
  }
  *n = copy;
  n->used = 1;
  n->handle = hdr.next_id++;
  rv = write_store();
  if (rv) free_object(n);
  else *out = n->handle;
  unlock_store(fd);
  return rv;
}

static void default_key_attrs(object_t *o) {
  if (!find_attr(o, CKA_TOKEN)) set_bool(o, CKA_TOKEN, 0);
  if (!find_attr(o, CKA_PRIVATE)) set_bool(o, CKA_PRIVATE, 1);
  if (!find_attr(o, CKA_SENSITIVE)) set_bool(o, CKA_SENSITIVE, 1);
  if (!find_attr(o, CKA_EXTRACTABLE)) set_bool(o, CKA_EXTRACTABLE, 0);
  static const CK_ATTRIBUTE_TYPE usage[] = {CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP,
                                            CKA_SIGN,    CKA_VERIFY,  CKA_DERIVE};
  for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++)
    if (!find_attr(o, usage[i])) set_bool(o, usage[i], 0);
  if (!find_attr(o, CKA_LABEL)) set_attr(o, CKA_LABEL, "", 0);
  if (!find_attr(o, CKA_ID)) set_attr(o, CKA_ID, "", 0);
  set_bool(o, CKA_ALWAYS_SENSITIVE, (CK_BBOOL)get_bool(o, CKA_SENSITIVE, 1));
  set_bool(o, CKA_NEVER_EXTRACTABLE, (CK_BBOOL)!get_bool(o, CKA_EXTRACTABLE, 0));
}

static CK_RV check_write(session_t *s, object_t *o) {
  if (logged_in == (CK_USER_TYPE)-1) return CKR_USER_NOT_LOGGED_IN;
  if (get_bool(o, CKA_TOKEN, 0) && !(s->flags & CKF_RW_SESSION)) return CKR_SESSION_READ_ONLY;
  return CKR_OK;
}

CK_RV C_CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!t || !out) LEAVE(CKR_ARGUMENTS_BAD);
  object_t *o = new_object();
  if (!o) LEAVE(CKR_DEVICE_MEMORY);
  CK_RV rv = apply_template(o, t, n);
  CK_ULONG cls = get_ulong(o, CKA_CLASS, (CK_ULONG)-1);
  if (!rv && cls != CKO_DATA && cls != CKO_SECRET_KEY && cls != CKO_PUBLIC_KEY) rv = CKR_TEMPLATE_INCONSISTENT;
  if (!rv && cls == CKO_SECRET_KEY) {
    attr_t *v = find_attr(o, CKA_VALUE);
    if (get_ulong(o, CKA_KEY_TYPE, 0) != ckk_sm4 || !v || v->len != 16) rv = CKR_TEMPLATE_INCONSISTENT;
    else {
      default_key_attrs(o);
      set_ulong(o, CKA_VALUE_LEN, 16);
      set_bool(o, CKA_LOCAL, 0);
    }
  }
  if (!rv && cls != CKO_SECRET_KEY) {
    if (!find_attr(o, CKA_TOKEN)) set_bool(o, CKA_TOKEN, 0);
    if (!find_attr(o, CKA_PRIVATE)) set_bool(o, CKA_PRIVATE, cls == CKO_DATA);
    if (!find_attr(o, CKA_LABEL)) set_attr(o, CKA_LABEL, "", 0);
  }
  if (!rv) rv = check_write(s, o);
  if (!rv) rv = commit_object(o, out);
  else free_object(o);
  LEAVE(rv);
}

CK_RV C_CopyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR p) {
  (void)h; (void)o; (void)t; (void)n; (void)p;
  return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  object_t *o = get_object(oh);
  if (!o) LEAVE(CKR_OBJECT_HANDLE_INVALID);
  if (!o->token) { free_object(o); LEAVE(CKR_OK); }
  if (!(s->flags & CKF_RW_SESSION)) LEAVE(CKR_SESSION_READ_ONLY);
  int fd = lock_store();
  CK_RV rv = refresh_store();
  o = rv ? NULL : get_object(oh);
  if (!rv && !o) rv = CKR_OBJECT_HANDLE_INVALID;
  if (!rv) {
    free_object(o);
    rv = write_store();
  }
  unlock_store(fd);
  LEAVE(rv);
}

CK_RV C_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ULONG_PTR n) {
  (void)h; (void)o; (void)n;
  return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  ENTER();
  if (!get_session(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  object_t *o = get_object(oh);
  if (!o) LEAVE(CKR_OBJECT_HANDLE_INVALID);
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < n; i++) {
    attr_t *a = find_attr(o, t[i].type);
    if ((t[i].type == CKA_VALUE && is_secret(o)) || t[i].type == CKA_VENDOR_DEFINED) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_SENSITIVE;
    } else if (!a) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      if (rv == CKR_OK) rv = CKR_ATTRIBUTE_TYPE_INVALID;
    } else if (!t[i].pValue) {
      t[i].ulValueLen = a->len;
    } else if (t[i].ulValueLen < a->len) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    } else {
      memcpy(t[i].pValue, a->value, a->len);
      t[i].ulValueLen = a->len;
    }
  }
  LEAVE(rv);
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  (void)h; (void)o; (void)t; (void)n;
  return CKR_FUNCTION_NOT_SUPPORTED;
}

static int matches(object_t *o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  if (get_bool(o, CKA_PRIVATE, 1) && logged_in != CKU_USER && logged_in != CKU_SO) return 0;
  for (CK_ULONG i = 0; i < n; i++) {
    attr_t *a = find_attr(o, t[i].type);
    if (!a || a->len != t[i].ulValueLen || (a->len && memcmp(a->value, t[i].pValue, a->len))) return 0;
  }
  return 1;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->finding) LEAVE(CKR_OPERATION_ACTIVE);
  int fd = lock_store();
  CK_RV rv = refresh_store();
  unlock_store(fd);
  if (rv) LEAVE(rv);
  free(s->found);
  s->found = calloc(MAX_OBJECTS, sizeof(CK_OBJECT_HANDLE));
  s->found_n = s->found_pos = 0;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && matches(&objects[i], t, n)) s->found[s->found_n++] = objects[i].handle;
  s->finding = 1;
  LEAVE(CKR_OK);
}

CK_RV C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!s->finding) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  CK_ULONG k = 0;
  while (k < max && s->found_pos < s->found_n) out[k++] = s->found[s->found_pos++];
  *count = k;
  LEAVE(CKR_OK);
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE h) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  s->finding = 0;
  LEAVE(CKR_OK);
}

/* --- cryptographic operations ----------------------------------------------------------- */
static CK_RV key_for(session_t *s, CK_OBJECT_HANDLE kh, CK_KEY_TYPE kt, CK_ATTRIBUTE_TYPE usage, object_t **out) {
  (void)s;
  object_t *k = get_object(kh);
  if (!k) return CKR_KEY_HANDLE_INVALID;
  if (get_ulong(k, CKA_KEY_TYPE, (CK_ULONG)-1) != kt) return CKR_KEY_TYPE_INCONSISTENT;
  if (!get_bool(k, usage, 0)) return CKR_KEY_FUNCTION_NOT_PERMITTED;
  *out = k;
  return CKR_OK;
}

static CK_RV cipher_init(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE kh, int op) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m) LEAVE(CKR_ARGUMENTS_BAD);
  if (s->op) LEAVE(CKR_OPERATION_ACTIVE);
  int mi = mech_of(m->mechanism);
  if (mi != M_SM4_ECB && mi != M_SM4_CBC) LEAVE(CKR_MECHANISM_INVALID);
  object_t *k;
  CK_RV rv = key_for(s, kh, ckk_sm4, op == OP_ENCRYPT ? CKA_ENCRYPT : CKA_DECRYPT, &k);
  if (rv) LEAVE(rv);
  if (mi == M_SM4_CBC) {
    if (!m->pParameter || m->ulParameterLen != 16) LEAVE(CKR_MECHANISM_PARAM_INVALID);
    memcpy(s->iv, m->pParameter, 16);
  }
  s->op = op;
  s->mech = m->mechanism;
  s->key = kh;
  LEAVE(CKR_OK);
}

static CK_RV cipher_do(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len,
                       int op) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->op != op) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  if (!out_len) LEAVE(CKR_ARGUMENTS_BAD);
  if (in_len % 16) { s->op = OP_NONE; LEAVE(op == OP_ENCRYPT ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE); }
  if (!out) { *out_len = in_len; LEAVE(CKR_OK); }
  if (*out_len < in_len) { *out_len = in_len; LEAVE(CKR_BUFFER_TOO_SMALL); }
  object_t *k = get_object(s->key);
  attr_t *v = k ? find_attr(k, CKA_VALUE) : NULL;
  s->op = OP_NONE;
  if (!v || v->len != 16) LEAVE(CKR_KEY_HANDLE_INVALID);
  int ok = mech_of(s->mech) == M_SM4_CBC ? sm4_cbc(v->value, s->iv, in, in_len, out, op == OP_ENCRYPT)
                                          : sm4_ecb(v->value, in, in_len, out, op == OP_ENCRYPT);
  *out_len = in_len;
  LEAVE(ok ? CKR_OK : CKR_FUNCTION_FAILED);
}

CK_RV C_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return cipher_init(h, m, k, OP_ENCRYPT); }
CK_RV C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG il, CK_BYTE_PTR o, CK_ULONG_PTR ol) {
  return cipher_do(h, i, il, o, ol, OP_ENCRYPT);
}
CK_RV C_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return cipher_init(h, m, k, OP_DECRYPT); }
CK_RV C_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG il, CK_BYTE_PTR o, CK_ULONG_PTR ol) {
  return cipher_do(h, i, il, o, ol, OP_DECRYPT);
}

CK_RV C_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM3) LEAVE(CKR_MECHANISM_INVALID);
  if (s->op) LEAVE(CKR_OPERATION_ACTIVE);
  s->op = OP_DIGEST;
  LEAVE(CKR_OK);
}

CK_RV C_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->op != OP_DIGEST) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  if (!out) { *out_len = 32; LEAVE(CKR_OK); }
  if (*out_len < 32) { *out_len = 32; LEAVE(CKR_BUFFER_TOO_SMALL); }
  unsigned int l = 0;
  s->op = OP_NONE;
  if (!EVP_Digest(in, in_len, out, &l, EVP_sm3(), NULL)) LEAVE(CKR_FUNCTION_FAILED);
  *out_len = l;
  LEAVE(CKR_OK);
}

/* SM2 key objects keep the key as DER (PKCS#8 for the private key) in a vendor attribute that is
   never returned; the public key also has CKA_EC_POINT (DER OCTET STRING of 04||x||y).
   Decoding the DER costs several times the signature itself (OpenSSL 3's decoders): the last
   PKEY_CACHE keys decoded are kept, keyed by their DER bytes (compared in full, so a changed
   or reloaded object never meets a stale key), and freed at C_Finalize. LOCKM is held. */
#define PKEY_CACHE 8
static struct {
  unsigned char *der;
  CK_ULONG len;
  int priv;
  EVP_PKEY *pk;
} pkey_cache[PKEY_CACHE];
static int pkey_next;

static void pkey_cache_clear(void) {
  for (int i = 0; i < PKEY_CACHE; i++) {
    OPENSSL_clear_free(pkey_cache[i].der, pkey_cache[i].len);
    EVP_PKEY_free(pkey_cache[i].pk);
    memset(&pkey_cache[i], 0, sizeof pkey_cache[i]);
  }
  pkey_next = 0;
}

static EVP_PKEY *pkey_of(object_t *k) {
  attr_t *d = find_attr(k, CKA_VENDOR_DEFINED);
  if (!d) return NULL;
  int priv = get_ulong(k, CKA_CLASS, 0) == CKO_PRIVATE_KEY;
  for (int i = 0; i < PKEY_CACHE; i++)
    if (pkey_cache[i].pk && pkey_cache[i].priv == priv && pkey_cache[i].len == d->len &&
        CRYPTO_memcmp(pkey_cache[i].der, d->value, d->len) == 0) {
      EVP_PKEY_up_ref(pkey_cache[i].pk);
      return pkey_cache[i].pk; /* the caller frees its reference */
    }
  const unsigned char *p = d->value;
  EVP_PKEY *pk = priv ? d2i_AutoPrivateKey(NULL, &p, (long)d->len) : d2i_PUBKEY(NULL, &p, (long)d->len);
  unsigned char *copy = pk ? OPENSSL_memdup(d->value, d->len) : NULL;
  if (copy && EVP_PKEY_up_ref(pk)) {
    int i = pkey_next;
    pkey_next = (pkey_next + 1) % PKEY_CACHE;
    OPENSSL_clear_free(pkey_cache[i].der, pkey_cache[i].len);
    EVP_PKEY_free(pkey_cache[i].pk);
    pkey_cache[i].der = copy;
    pkey_cache[i].len = d->len;
    pkey_cache[i].priv = priv;
    pkey_cache[i].pk = pk;
  } else {
    OPENSSL_free(copy);
  }
  return pk;
}

static CK_RV sign_init(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE kh, int op) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM2_SIGN) LEAVE(CKR_MECHANISM_INVALID);
  if (s->op) LEAVE(CKR_OPERATION_ACTIVE);
  object_t *k;
  CK_RV rv = key_for(s, kh, ckk_sm2, op == OP_SIGN ? CKA_SIGN : CKA_VERIFY, &k);
  if (rv) LEAVE(rv);
  if (m->pParameter && (m->ulParameterLen == 0 || m->ulParameterLen > sizeof s->id)) LEAVE(CKR_MECHANISM_PARAM_INVALID);
  if (m->pParameter) {
    memcpy(s->id, m->pParameter, m->ulParameterLen);
    s->id_len = m->ulParameterLen;
  } else {
    memcpy(s->id, "1234567812345678", 16); /* GB/T 35276 / GM/T 0009 default user identity */
    s->id_len = 16;
  }
  s->op = op;
  s->mech = m->mechanism;
  s->key = kh;
  LEAVE(CKR_OK);
}

static EVP_MD_CTX *sm2_ctx(EVP_PKEY *pk, session_t *s, int sign) {
  EVP_MD_CTX *mctx = EVP_MD_CTX_new();
  EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(pk, NULL);
  if (!mctx || !pctx || EVP_PKEY_CTX_set1_id(pctx, s->id, (int)s->id_len) <= 0) goto fail;
  EVP_MD_CTX_set_pkey_ctx(mctx, pctx);
  if ((sign ? EVP_DigestSignInit(mctx, NULL, EVP_sm3(), NULL, pk) : EVP_DigestVerifyInit(mctx, NULL, EVP_sm3(), NULL, pk)) != 1)
    goto fail;
  return mctx; /* pctx is freed by the caller after mctx */
fail:
  EVP_MD_CTX_free(mctx);
  EVP_PKEY_CTX_free(pctx);
  return NULL;
}

CK_RV C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return sign_init(h, m, k, OP_SIGN); }
CK_RV C_VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { return sign_init(h, m, k, OP_VERIFY); }

static int bn_fixed(const BIGNUM *b, unsigned char *out) { return BN_bn2binpad(b, out, 32) == 32; }

CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->op != OP_SIGN) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  if (!out) { *out_len = 64; LEAVE(CKR_OK); }
  if (*out_len < 64) { *out_len = 64; LEAVE(CKR_BUFFER_TOO_SMALL); }
  s->op = OP_NONE;
  object_t *k = get_object(s->key);
  EVP_PKEY *pk = k ? pkey_of(k) : NULL;
  if (!pk) LEAVE(CKR_KEY_HANDLE_INVALID);
  CK_RV rv = CKR_FUNCTION_FAILED;
  EVP_MD_CTX *mctx = sm2_ctx(pk, s, 1);
  unsigned char der[80];
  size_t dl = sizeof der;
  if (mctx && EVP_DigestSign(mctx, der, &dl, in, in_len) == 1) {
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dl);
    if (sig && bn_fixed(ECDSA_SIG_get0_r(sig), out) && bn_fixed(ECDSA_SIG_get0_s(sig), out + 32)) {
      *out_len = 64;
      rv = CKR_OK;
    }
    ECDSA_SIG_free(sig);
  }
  if (mctx) {
    EVP_PKEY_CTX *pctx = EVP_MD_CTX_get_pkey_ctx(mctx);
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_CTX_free(pctx);
  }
  EVP_PKEY_free(pk);
  LEAVE(rv);
}

CK_RV C_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig, CK_ULONG sig_len) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->op != OP_VERIFY) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  s->op = OP_NONE;
  if (sig_len != 64) LEAVE(CKR_SIGNATURE_LEN_RANGE);
  object_t *k = get_object(s->key);
  EVP_PKEY *pk = k ? pkey_of(k) : NULL;
  if (!pk) LEAVE(CKR_KEY_HANDLE_INVALID);
  ECDSA_SIG *es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
  unsigned char *der = NULL;
  int dl = i2d_ECDSA_SIG(es, &der);
  CK_RV rv = CKR_SIGNATURE_INVALID;
  EVP_MD_CTX *mctx = sm2_ctx(pk, s, 0);
  if (mctx && dl > 0 && EVP_DigestVerify(mctx, der, (size_t)dl, in, in_len) == 1) rv = CKR_OK;
  if (mctx) {
    EVP_PKEY_CTX *pctx = EVP_MD_CTX_get_pkey_ctx(mctx);
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_CTX_free(pctx);
  }
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  EVP_PKEY_free(pk);
  LEAVE(rv);
}

/* --- key management --------------------------------------------------------------------- */
static CK_RV new_secret(session_t *s, CK_ATTRIBUTE_PTR t, CK_ULONG n, const unsigned char *value, CK_ULONG len,
                        int local, CK_OBJECT_HANDLE_PTR out) {
  object_t *o = new_object();
  if (!o) return CKR_DEVICE_MEMORY;
  set_ulong(o, CKA_CLASS, CKO_SECRET_KEY);
  set_ulong(o, CKA_KEY_TYPE, ckk_sm4);
  CK_RV rv = apply_template(o, t, n);
  CK_ULONG kt = get_ulong(o, CKA_KEY_TYPE, (CK_ULONG)-1);
  CK_ULONG want = get_ulong(o, CKA_VALUE_LEN, kt == ckk_sm4 ? 16 : len);
  if (!rv && get_ulong(o, CKA_CLASS, 0) != CKO_SECRET_KEY) rv = CKR_TEMPLATE_INCONSISTENT;
  if (!rv && kt != ckk_sm4 && kt != CKK_GENERIC_SECRET) rv = CKR_TEMPLATE_INCONSISTENT;
  if (!rv && (want > len || (kt == ckk_sm4 && want != 16) || want == 0)) rv = CKR_TEMPLATE_INCONSISTENT;
  if (!rv) {
    default_key_attrs(o);
    /* a key of full block length derived or unwrapped here is a key, not a check value: it
       stays sensitive whatever the template asks */
    if (want >= 8 && !get_bool(o, CKA_SENSITIVE, 1)) rv = CKR_TEMPLATE_INCONSISTENT;
  }
  if (!rv) {
    set_attr(o, CKA_VALUE, value, want);
    set_ulong(o, CKA_VALUE_LEN, want);
    set_bool(o, CKA_LOCAL, (CK_BBOOL)local);
    rv = check_write(s, o);
  }
  if (!rv) rv = commit_object(o, out);
  else free_object(o);
  return rv;
}

CK_RV C_GenerateKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM4_KEYGEN) LEAVE(CKR_MECHANISM_INVALID);
  if (!out) LEAVE(CKR_ARGUMENTS_BAD);
  unsigned char v[16];
  if (RAND_priv_bytes(v, 16) != 1) LEAVE(CKR_FUNCTION_FAILED);
  CK_RV rv = new_secret(s, t, n, v, 16, 1, out);
  OPENSSL_cleanse(v, 16);
  LEAVE(rv);
}

static const unsigned char SM2_OID[] = {0x06, 0x08, 0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x82, 0x2D};

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR vt,
                        CK_ULONG vn, CK_OBJECT_HANDLE_PTR pub_out, CK_OBJECT_HANDLE_PTR priv_out) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM2_KEYGEN) LEAVE(CKR_MECHANISM_INVALID);
  if (!pub_out || !priv_out) LEAVE(CKR_ARGUMENTS_BAD);
  EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "SM2");
  if (!pk) LEAVE(CKR_FUNCTION_FAILED);
  unsigned char point[65], *pubder = NULL, *privder = NULL;
  size_t pl = 0;
  int publen = i2d_PUBKEY(pk, &pubder), privlen = i2d_PrivateKey(pk, &privder);
  int ok = EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &pl) && pl == 65 &&
           publen > 0 && privlen > 0;
  EVP_PKEY_free(pk);
  CK_RV rv = ok ? CKR_OK : CKR_FUNCTION_FAILED;
  object_t *pub = NULL, *priv = NULL;
  if (!rv) {
    pub = new_object();
    priv = pub ? new_object() : NULL;
    if (!priv) rv = CKR_DEVICE_MEMORY;
  }
  if (!rv) {
    unsigned char ecpoint[67] = {0x04, 65};
    memcpy(ecpoint + 2, point, 65);
    set_ulong(pub, CKA_CLASS, CKO_PUBLIC_KEY);
    set_ulong(pub, CKA_KEY_TYPE, ckk_sm2);
    set_bool(pub, CKA_PRIVATE, 0);
    set_bool(pub, CKA_VERIFY, 1);
    rv = apply_template(pub, pt, pn);
    set_attr(pub, CKA_EC_PARAMS, SM2_OID, sizeof SM2_OID);
    set_attr(pub, CKA_EC_POINT, ecpoint, sizeof ecpoint);
    set_attr(pub, CKA_VENDOR_DEFINED, pubder, (CK_ULONG)publen);
    set_bool(pub, CKA_LOCAL, 1);
    if (!find_attr(pub, CKA_TOKEN)) set_bool(pub, CKA_TOKEN, 0);
    if (!find_attr(pub, CKA_LABEL)) set_attr(pub, CKA_LABEL, "", 0);
    set_ulong(priv, CKA_CLASS, CKO_PRIVATE_KEY);
    set_ulong(priv, CKA_KEY_TYPE, ckk_sm2);
    set_bool(priv, CKA_SIGN, 1);
    if (!rv) rv = apply_template(priv, vt, vn);
    default_key_attrs(priv);
    set_bool(priv, CKA_SENSITIVE, 1);
    set_bool(priv, CKA_EXTRACTABLE, 0);
    set_bool(priv, CKA_ALWAYS_SENSITIVE, 1);
    set_bool(priv, CKA_NEVER_EXTRACTABLE, 1);
    set_attr(priv, CKA_EC_PARAMS, SM2_OID, sizeof SM2_OID);
    set_attr(priv, CKA_VENDOR_DEFINED, privder, (CK_ULONG)privlen);
    set_bool(priv, CKA_LOCAL, 1);
    if (!rv) rv = check_write(s, priv);
    if (!rv) rv = check_write(s, pub);
  }
  OPENSSL_free(pubder);
  if (privder) OPENSSL_clear_free(privder, (size_t)privlen);
  if (!rv) rv = commit_object(pub, pub_out);
  else if (pub) free_object(pub);
  if (!rv) rv = commit_object(priv, priv_out);
  else if (priv) free_object(priv);
  LEAVE(rv);
}

CK_RV C_WrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wh, CK_OBJECT_HANDLE kh, CK_BYTE_PTR out,
                CK_ULONG_PTR out_len) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM4_ECB) LEAVE(CKR_MECHANISM_INVALID);
  object_t *w, *k = get_object(kh);
  CK_RV rv = key_for(s, wh, ckk_sm4, CKA_WRAP, &w);
  if (rv) LEAVE(rv == CKR_KEY_HANDLE_INVALID ? CKR_WRAPPING_KEY_HANDLE_INVALID : rv);
  if (!k || get_ulong(k, CKA_CLASS, 0) != CKO_SECRET_KEY) LEAVE(CKR_KEY_HANDLE_INVALID);
  if (!get_bool(k, CKA_EXTRACTABLE, 0)) LEAVE(CKR_KEY_UNEXTRACTABLE);
  attr_t *v = find_attr(k, CKA_VALUE), *wv = find_attr(w, CKA_VALUE);
  if (!v || v->len % 16 || !out_len) LEAVE(CKR_KEY_SIZE_RANGE);
  if (!out) { *out_len = v->len; LEAVE(CKR_OK); }
  if (*out_len < v->len) { *out_len = v->len; LEAVE(CKR_BUFFER_TOO_SMALL); }
  if (!sm4_ecb(wv->value, v->value, v->len, out, 1)) LEAVE(CKR_FUNCTION_FAILED);
  *out_len = v->len;
  LEAVE(CKR_OK);
}

CK_RV C_UnwrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uh, CK_BYTE_PTR in, CK_ULONG in_len,
                  CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM4_ECB) LEAVE(CKR_MECHANISM_INVALID);
  object_t *u;
  CK_RV rv = key_for(s, uh, ckk_sm4, CKA_UNWRAP, &u);
  if (rv) LEAVE(rv == CKR_KEY_HANDLE_INVALID ? CKR_UNWRAPPING_KEY_HANDLE_INVALID : rv);
  if (!in || in_len != 16 || !out) LEAVE(CKR_WRAPPED_KEY_LEN_RANGE);
  unsigned char v[16];
  if (!sm4_ecb(find_attr(u, CKA_VALUE)->value, in, 16, v, 0)) LEAVE(CKR_FUNCTION_FAILED);
  rv = new_secret(s, t, n, v, 16, 0, out);
  OPENSSL_cleanse(v, 16);
  LEAVE(rv);
}

CK_RV C_DeriveKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE bh, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                  CK_OBJECT_HANDLE_PTR out) {
  ENTER();
  session_t *s = get_session(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!m || mech_of(m->mechanism) != M_SM4_DERIVE) LEAVE(CKR_MECHANISM_INVALID);
  if (!out || !m->pParameter || m->ulParameterLen != sizeof(CK_KEY_DERIVATION_STRING_DATA))
    LEAVE(CKR_MECHANISM_PARAM_INVALID);
  CK_KEY_DERIVATION_STRING_DATA *d = m->pParameter;
  if (!d->pData || !d->ulLen || d->ulLen % 16 || d->ulLen > 64) LEAVE(CKR_MECHANISM_PARAM_INVALID);
  object_t *b;
  CK_RV rv = key_for(s, bh, ckk_sm4, CKA_DERIVE, &b);
  if (rv) LEAVE(rv);
  unsigned char v[64];
  if (!sm4_ecb(find_attr(b, CKA_VALUE)->value, d->pData, d->ulLen, v, 1)) LEAVE(CKR_FUNCTION_FAILED);
  rv = new_secret(s, t, n, v, d->ulLen, 0, out);
  OPENSSL_cleanse(v, sizeof v);
  LEAVE(rv);
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG len) {
  (void)h; (void)seed; (void)len;
  return CKR_RANDOM_SEED_NOT_SUPPORTED;
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len) {
  ENTER();
  if (!get_session(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  LEAVE(RAND_bytes(out, (int)len) == 1 ? CKR_OK : CKR_FUNCTION_FAILED);
}

/* --- not offered ------------------------------------------------------------------------ */
#define NOT_SUPPORTED(name, args) \
  CK_RV name args { return CKR_FUNCTION_NOT_SUPPORTED; }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
NOT_SUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG_PTR l))
NOT_SUPPORTED(C_SetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_OBJECT_HANDLE a, CK_OBJECT_HANDLE b))
NOT_SUPPORTED(C_EncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_EncryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DecryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DecryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l))
NOT_SUPPORTED(C_DigestKey, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k))
NOT_SUPPORTED(C_DigestFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_SignUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l))
NOT_SUPPORTED(C_SignFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
NOT_SUPPORTED(C_SignRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_VerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l))
NOT_SUPPORTED(C_VerifyFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG l))
NOT_SUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
NOT_SUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
NOT_SUPPORTED(C_GetFunctionStatus, (CK_SESSION_HANDLE h))
NOT_SUPPORTED(C_CancelFunction, (CK_SESSION_HANDLE h))
NOT_SUPPORTED(C_WaitForSlotEvent, (CK_FLAGS f, CK_SLOT_ID_PTR s, CK_VOID_PTR r))
#pragma GCC diagnostic pop

static CK_FUNCTION_LIST FUNCTIONS;

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (!out) return CKR_ARGUMENTS_BAD;
  FUNCTIONS = (CK_FUNCTION_LIST){
      {2, 40},
      C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
      C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
      C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
      C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,
      C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
      C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
      C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal,
      C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
      C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate,
      C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,
      C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent};
  *out = &FUNCTIONS;
  return CKR_OK;
}
