-- graylane global rate limit: GCRA (generic cell rate algorithm) with a one-interval grace for
-- late arrivals; one atomic call per request.
--
-- KEYS[1]  the limit's key; holds the theoretical arrival time (TAT) in microseconds on the
--          Redis server's clock, so every gateway sharing the key measures time the same way.
-- ARGV[1]  emission interval T = per / requests, in whole microseconds (>= 1)
-- ARGV[2]  tolerance tau = burst * T, in microseconds
--
-- A request is allowed when TAT - tau <= now; it then moves TAT on by T. A TAT in the past by
-- less than T is kept: the slot that opened then is taken late, and the schedule does not slip.
-- One further in the past means the key was idle, and it starts again from now.
-- Returns {allowed (1 or 0), remaining, reset_after_us, retry_after_us}:
--   remaining       requests that would still be allowed right now
--   reset_after_us  time until the limit is back to full (TAT reached)
--   retry_after_us  for a denied request, time until one would be allowed; 0 when allowed

-- Redis 3.2 and 4 need this before a write that follows TIME; later versions always replicate
-- the effects of a script and keep the call as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat <= now - interval then
  tat = now
end

local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end

local new_tat = tat + interval
-- Kept until the grace after new_tat is over; after that the key would start from now anyway.
local ttl_ms = math.ceil((new_tat + interval - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))

local remaining = math.floor((now + tolerance - new_tat) / interval) + 1
if remaining < 0 then
  remaining = 0
end
return {1, remaining, new_tat - now, 0}
