-- wrk script for bench/run.py: one endpoint, a fresh key on every set_key, status accounting.
--
--   wrk ... -s bench/wrk.lua URL -- MODE BEARER TARGET PREFIX
--   MODE    set_key | view_key | list
--   TARGET  hot:<identifier>  or  spread:<identifier prefix>:<count>  (a random one of count tokens)
--   PREFIX  makes this run's keys unique (keys are unique across all tokens)
--
-- done() prints one line, "BENCH_RESULT {json}", that run.py parses.

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   mode, bearer, target, prefix = args[1], args[2], args[3], args[4]
   ok, client_errors, server_errors, other, last_bad = 0, 0, 0, 0, 0
   counter = 0
   headers = { ["Authorization"] = "Bearer " .. bearer }
   if mode == "set_key" then
      headers["Content-Type"] = "application/json"
   end
   local kind, rest = target:match("^(%a+):(.*)$")
   if kind == "hot" then
      hot = rest
   else
      local p, n = rest:match("^(.*):(%d+)$")
      spread_prefix, spread_count = p, tonumber(n)
   end
   math.randomseed(os.time() * 1000 + thread_id)
end

local function identifier()
   if hot then
      return hot
   end
   return string.format("%s%05d", spread_prefix, math.random(0, spread_count - 1))
end

function request()
   counter = counter + 1
   if mode == "set_key" then
      -- 60 visible ASCII characters, never repeated within a run (thread id + counter).
      local key = string.format("%s-t%02d-%012d-fresh-bench-key-0123456789", prefix, thread_id, counter)
      return wrk.format("POST", "/core/tokens/" .. identifier() .. "/set_key/", headers, '{"key": "' .. key .. '"}')
   elseif mode == "view_key" then
      return wrk.format("GET", "/core/tokens/" .. identifier() .. "/view_key/", headers)
   end
   return wrk.format("GET", "/core/tokens/", headers)
end

function response(status, resp_headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      last_bad = status
      if status >= 500 then
         server_errors = server_errors + 1
      elseif status >= 400 then
         client_errors = client_errors + 1
      else
         other = other + 1
      end
   end
end

function done(summary, latency, requests)
   local totals = { ok = 0, client_errors = 0, server_errors = 0, other = 0 }
   local last = 0
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + thread:get(name)
      end
      if thread:get("last_bad") ~= 0 then
         last = thread:get("last_bad")
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
         .. '"max_us": %d, "ok": %d, "client_errors": %d, "server_errors": %d, "other": %d, "last_bad_status": %d, '
         .. '"socket_errors": %d, "timeouts": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
      latency.max, totals.ok, totals.client_errors, totals.server_errors, totals.other, last,
      e.connect + e.read + e.write, e.timeout))
end
