-- wrk script of bench/metrics/run.py, for both the API's load and the scrapers.
--   BENCH_DELAY_MS   pause before each request on a connection (0: back to back)
--   BENCH_AUTH       the Authorization header to send, if any
-- done() writes one JSON line after a marker, with the whole latency histogram (distinct
-- value in microseconds, count), so that the runner merges rounds before taking percentiles.

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

done = function(summary, latency, requests)
  local pairs_out = {}
  for i = 1, #latency do
    local value, count = latency(i)
    pairs_out[#pairs_out + 1] = string.format("[%d,%d]", value, count)
  end
  local e = summary.errors
  io.write("BENCH-JSON ")
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"histogram":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(pairs_out, ",")))
end
