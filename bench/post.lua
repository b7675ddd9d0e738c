-- wrk script: POST one JSON body read from a file, print latency percentiles as JSON.
-- Usage: wrk -s post.lua URL -- BODY_FILE [BEARER_KEY] [count-statuses]
-- With "count-statuses" a response() hook counts every status code (slower: wrk must then
-- parse each response in Lua), used only for the overload scenario.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if args[2] ~= nil and args[2] ~= "" and args[2] ~= "-" then
      wrk.headers["Authorization"] = "Bearer " .. args[2]
   end
   if args[3] == "count-statuses" then
      statuses = {}
      response = function(status, headers, body)
         statuses[status] = (statuses[status] or 0) + 1
      end
   end
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      local s = thread:get("statuses")
      if s ~= nil then
         for code, n in pairs(s) do
            counts[tostring(code)] = (counts[tostring(code)] or 0) + n
         end
      end
   end
   local parts = {}
   for code, n in pairs(counts) do
      table.insert(parts, string.format('"%s":%d', code, n))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":{%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.mean, latency.max,
      e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
