-- wrk script of bench/verification.py: the verification flow (or hello-world) from wrk.
--
--   wrk -t32 -c32 -d10s -s bench/verification_wrk.lua http://127.0.0.1:PORT -- verify CARDS TOKEN
--   wrk -t32 -c32 -d10s -s bench/verification_wrk.lua http://127.0.0.1:PORT -- hello
--
-- One connection per wrk thread (-t = -c), so each thread's Lua state is its connection's state.
-- verify: POST /v1/verifications/challenge, then the card's INTERNAL AUTHENTICATE answer
-- computed here like the chip does (3DES: session key = ECB(IRK, factor || ~factor), answer =
-- ECB(session key, random); libcrypto through LuaJIT's FFI), then POST /v1/verifications.
-- CARDS is a file of "cic card_number irk_hex" lines. Only answers "valid":true count.
-- done() prints one line "YKT-RESULT {json}" with the counts and the latency percentiles
-- (p50, p99, p99.9 and max, in ms) of each request kind and of the whole flow.

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
const EVP_CIPHER *EVP_des_ede_ecb(void);
int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl,
                       const unsigned char *key, const unsigned char *iv);
int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int padding);
int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                      const unsigned char *in, int inl);
typedef struct { long tv_sec; long tv_nsec; } ykt_timespec;
int clock_gettime(int clk_id, ykt_timespec *tp);
]]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local crypto, ctx, des3, outbuf, outlen, ts
local mode, cards, token
local challenge_req, hello_req, verify_head
local pending, kind, t_sent, t_flow
valid, invalid, errors, first_error = 0, 0, 0, ""
lat_challenge, lat_verify, lat_flow, lat_hello = {}, {}, {}, {}

local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- byte <-> hex by table look-up (no closures per byte on the hot path)
local HEX2, TOHEX, FLIP = {}, {}, {}
for b = 0, 255 do
  local h = string.format("%02x", b)
  HEX2[h], HEX2[h:upper()] = string.char(b), string.char(b)
  TOHEX[string.char(b)] = h
  FLIP[string.char(b)] = string.char(255 - b)
end

local function unhex(s)
  return (s:gsub("..", HEX2))
end

local function tohex(s)
  return (s:gsub(".", TOHEX))
end

local function ecb(key16, data)
  local key24 = key16 .. key16:sub(1, 8)
  crypto.EVP_EncryptInit_ex(ctx, des3, nil, key24, nil)
  crypto.EVP_CIPHER_CTX_set_padding(ctx, 0)
  crypto.EVP_EncryptUpdate(ctx, outbuf, outlen, data, #data)
  return ffi.string(outbuf, outlen[0])
end

local function xor_ff(s)
  return (s:gsub(".", FLIP))
end

function init(args)
  mode = args[1] or "hello"
  ts = ffi.new("ykt_timespec")
  hello_req = wrk.format("GET", "/v1/hello", {["Host"] = "bench"})
  if mode == "verify" then
    crypto = ffi.load("libcrypto.so.3")
    ctx = crypto.EVP_CIPHER_CTX_new()
    des3 = crypto.EVP_des_ede_ecb()
    outbuf = ffi.new("unsigned char[64]")
    outlen = ffi.new("int[1]")
    cards = {}
    for line in io.lines(args[2]) do
      local cic, number, irk = line:match("^(%x+) (%w+) (%x+)$")
      table.insert(cards, {cic, number, unhex(irk)})
    end
    token = args[3]
    challenge_req = wrk.format("POST", "/v1/verifications/challenge",
      {["Host"] = "bench", ["Authorization"] = "Bearer " .. token, ["Content-Length"] = "0"})
    verify_head = "POST /v1/verifications HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " ..
      token .. "\r\nContent-Type: application/json\r\nContent-Length: "
    math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
  end
end

function request()
  t_sent = now_us()
  if mode == "hello" then
    return hello_req
  end
  if pending ~= nil then
    local r = pending
    pending = nil
    kind = "verify"
    return r
  end
  kind = "challenge"
  t_flow = t_sent
  return challenge_req
end

local function fail(what, status, body)
  errors = errors + 1
  if first_error == "" then
    first_error = what .. " " .. status .. ": " .. body:sub(1, 200)
  end
end

function response(status, headers, body)
  local dt = now_us() - t_sent
  if mode == "hello" then
    if status == 200 then
      valid = valid + 1
      lat_hello[#lat_hello + 1] = dt
    else
      fail("hello", status, body)
    end
    return
  end
  if kind == "challenge" then
    if status ~= 200 then
      fail("challenge", status, body)
      return
    end
    lat_challenge[#lat_challenge + 1] = dt
    local id = body:match('"challenge_id":"(%x+)"')
    local challenge = unhex(body:match('"challenge":"(%x+)"'))
    local card = cards[math.random(#cards)]
    local factor, random = challenge:sub(1, 8), challenge:sub(9, 16)
    local session = ecb(card[3], factor .. xor_ff(factor))
    local answer = ecb(session, random)
    local payload = '{"challenge_id":"' .. id .. '","card_identification_code":"' .. card[1] ..
      '","card_number":"' .. card[2] .. '","response":"' .. tohex(answer) ..
      '","application":"medical"}'
    pending = verify_head .. #payload .. "\r\n\r\n" .. payload
    return
  end
  if status ~= 200 then
    fail("verify", status, body)
  elseif body:find('"valid":true', 1, true) then
    valid = valid + 1
    lat_verify[#lat_verify + 1] = dt
    lat_flow[#lat_flow + 1] = now_us() - t_flow
  else
    invalid = invalid + 1
    if first_error == "" then first_error = "invalid: " .. body:sub(1, 200) end
  end
end

local function pct(values, p)
  if #values == 0 then return -1 end
  table.sort(values)
  local i = math.floor(p * #values) + 1
  if i > #values then i = #values end
  return values[i]
end

function done(summary, latency, requests)
  local total = {valid = 0, invalid = 0, errors = 0}
  local all = {challenge = {}, verify = {}, flow = {}, hello = {}}
  local first = ""
  for _, t in ipairs(threads) do
    total.valid = total.valid + t:get("valid")
    total.invalid = total.invalid + t:get("invalid")
    total.errors = total.errors + t:get("errors")
    if first == "" then first = t:get("first_error") end
    for name, values in pairs(all) do
      for _, v in ipairs(t:get("lat_" .. name)) do values[#values + 1] = v end
    end
  end
  local e = summary.errors
  if first == "" and e.status + e.connect + e.read + e.write + e.timeout > 0 then
    first = string.format("wrk: status %d, connect %d, read %d, write %d, timeout %d",
      e.status, e.connect, e.read, e.write, e.timeout)
  end
  local parts = {
    string.format('"count":%d,"invalid":%d,"errors":%d,"elapsed":%f', total.valid,
      total.invalid, total.errors + summary.errors.status + summary.errors.connect +
      summary.errors.read + summary.errors.write + summary.errors.timeout,
      summary.duration / 1000000),
    string.format('"first_error":"%s"', first:gsub('[%c"\\]', "?")),
  }
  for name, values in pairs(all) do
    if #values > 0 then
      parts[#parts + 1] = string.format(
        '"%s_p50_ms":%.3f,"%s_p99_ms":%.3f,"%s_p999_ms":%.3f,"%s_max_ms":%.3f', name,
        pct(values, 0.50) / 1000, name, pct(values, 0.99) / 1000, name,
        pct(values, 0.999) / 1000, name, values[#values] / 1000)
    end
  end
  io.write("YKT-RESULT {" .. table.concat(parts, ",") .. "}\n")
end
