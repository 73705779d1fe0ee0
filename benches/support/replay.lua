-- wrk script of benches/ingress_throughput.rs: replays pre-signed webhooks, each at most once
-- while enough were prepared. Thread i reads <dir>/requests.<i>, one "signature<TAB>form body"
-- per line, and formats every request before the run starts, so request() only indexes a table.
-- done() prints one machine-readable RESULT line (latencies in microseconds).
--
--   wrk -t1 -c64 -d10s -s replay.lua http://127.0.0.1:PORT -- DIR PATH

local counter = 0
local threads = {}

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local dir, path = args[1], args[2]
   prepared = {}
   for line in io.lines(dir .. "/requests." .. id) do
      local signature, body = line:match("^([^\t]*)\t(.*)$")
      prepared[#prepared + 1] = wrk.format("POST", path, {
         ["Content-Type"] = "application/x-www-form-urlencoded",
         ["X-Twilio-Signature"] = signature,
      }, body)
   end
   count = #prepared
   sent = 0
end

function request()
   sent = sent + 1
   return prepared[(sent - 1) % #prepared + 1]
end

function done(summary, latency, requests)
   local reused = 0
   for _, thread in ipairs(threads) do
      local over = thread:get("sent") - thread:get("count")
      if over > 0 then reused = reused + over end
   end
   local errors = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50=%d p99=%d p999=%d max=%d errors=%d reused=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      errors.connect + errors.read + errors.write + errors.status + errors.timeout, reused))
end
