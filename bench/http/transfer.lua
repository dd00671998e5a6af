-- wrk script: POST /v1/wallet/transfer, one transfer per request, each with a new UUIDv7
-- Idempotency-Key, from the external account 1 to a random account 2..WALLET_ACCOUNTS.
-- WALLET_BATCH > 1 posts /v1/wallet/transfers with that many transfers per request instead.
-- Usage: wrk -t2 -c64 -d10s --latency -s bench/http/transfer.lua http://127.0.0.1:8400
-- wrk counts answers other than 2xx/3xx itself ("Non-2xx or 3xx responses").
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } wallet_timeval;
  int gettimeofday(wallet_timeval *tv, void *tz);
]]
local now = ffi.new("wallet_timeval")

local accounts = tonumber(os.getenv("WALLET_ACCOUNTS") or "1000")
local batch = tonumber(os.getenv("WALLET_BATCH") or "1")
local threads = {}
thread_id = 0
local counter = 0

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + thread_id * 7919)
end

-- Unique without coordination: the thread id and a per-thread counter are part of every key.
local function uuid7()
  ffi.C.gettimeofday(now, nil)
  local ms = tonumber(now.tv_sec) * 1000 + math.floor(tonumber(now.tv_usec) / 1000)
  counter = counter + 1
  local time_high = math.floor(ms / 65536)
  local time_low = ms % 65536
  return string.format("%08x-%04x-7%03x-%04x-%08x%04x", time_high, time_low, math.random(0, 0xfff),
    0x8000 + (thread_id % 64) * 256 + math.random(0, 255), counter, math.random(0, 0xffff))
end

local function transfer_json(with_key)
  local to = math.random(2, accounts)
  local key = with_key and string.format('"idempotency_key":"%s",', uuid7()) or ""
  return string.format('{%s"from_account":1,"to_account":%d,"amount":"0.01","currency":"USD"}', key, to)
end

function request()
  if batch <= 1 then
    local headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = uuid7() }
    return wrk.format("POST", "/v1/wallet/transfer", headers, transfer_json(false))
  end
  local items = {}
  for i = 1, batch do
    items[i] = transfer_json(true)
  end
  local body = '{"transfers":[' .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", "/v1/wallet/transfers", { ["Content-Type"] = "application/json" }, body)
end

-- One machine-readable line: requests/s, transfers/s, latency percentiles, errors.
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "WALLET requests/s %.0f transfers/s %.0f p50_ms %.2f p90_ms %.2f p99_ms %.2f p99.9_ms %.2f max_ms %.2f errors %d non2xx %d\n",
    summary.requests / seconds, summary.requests * batch / seconds, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000, errors, summary.errors.status))
end
