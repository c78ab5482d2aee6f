-- wrk script of bench/checkout/run.py: POST {"sku": slug} with a fresh Idempotency-Key per
-- request, the buyers' tokens taken in turn. Arguments (after --): path, key prefix (unique per
-- round), tokens file (one per line), SKU slug.

local tokens = {}
local counter = 0
local path, prefix, body

init = function(args)
  path, prefix = args[1], args[2]
  for line in io.lines(args[3]) do tokens[#tokens + 1] = line end
  body = '{"sku":"' .. args[4] .. '"}'
end

request = function()
  counter = counter + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1],
    ["Idempotency-Key"] = prefix .. "-" .. counter,
    ["Content-Type"] = "application/json",
  }, body)
end

-- As bench/catalog/report.lua: one JSON line with the whole latency histogram.
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
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(pairs_out, ",")))
end
