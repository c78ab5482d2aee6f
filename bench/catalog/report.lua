-- wrk's done() hook: writes one JSON line, after a marker, that bench/catalog/run.py reads.
-- It carries the whole latency histogram (distinct value in microseconds, count), so that
-- the runner can merge rounds and take exact percentiles of the lot, not average percentiles.
-- Only done() is defined: a response() hook would make wrk parse every reply in Lua.

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
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"histogram":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    table.concat(pairs_out, ",")))
end
