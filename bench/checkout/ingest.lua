-- wrk script of bench/checkout/run.py: POSTs signed Stripe events to the webhook endpoint,
-- each once. Arguments (after --): path, events file (one "<Stripe-Signature>\t<body>" per
-- line, signed by the runner just before). Past the last event it starts again, and the
-- runner then sees duplicates in the counts and says the pool was too small.

local events = {}
local counter = 0
local path

init = function(args)
  path = args[1]
  for line in io.lines(args[2]) do
    local tab = string.find(line, "\t", 1, true)
    events[#events + 1] = { string.sub(line, 1, tab - 1), string.sub(line, tab + 1) }
  end
end

request = function()
  counter = counter + 1
  local event = events[((counter - 1) % #events) + 1]
  return wrk.format("POST", path, {
    ["Stripe-Signature"] = event[1],
    ["Content-Type"] = "application/json",
  }, event[2])
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
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(pairs_out, ",")))
end
