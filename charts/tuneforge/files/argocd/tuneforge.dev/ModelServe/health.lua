-- Argo CD health of a tuneforge.dev ModelServe, from the generic status shape the operator
-- writes (phase, reason, message, observedGeneration, conditions). Uses only Lua's base library:
-- argocd-cm customizations run without the string library unless useOpenLibs is set.
--
-- status.observedGeneration stays behind while a blue/green rollout is in flight (kstatus: the
-- edit is not yet served) while the conditions carry the generation the operator last read, so
-- the generation the status describes is the newest of the two: a rollout of the current spec
-- is Progressing (or Suspended while it waits for a promote), not "not yet observed".
local hs = {}

local function described(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then return message end
  if reason ~= nil then return reason end
  return ""
end

local function seenGeneration(status)
  local seen = tonumber(status.observedGeneration)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      local g = tonumber(c.observedGeneration)
      if g ~= nil and (seen == nil or g > seen) then seen = g end
    end
  end
  return seen
end

local function conditionTrue(status, type)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type and c.status == "True" then return c end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the ModelServe"
  return hs
end

local generation = tonumber(obj.metadata.generation)
local seen = seenGeneration(status)
if generation ~= nil and (seen == nil or seen < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status describes " .. (seen or "none") .. ", " .. status.phase .. ")"
  return hs
end

local message = described(status.reason, status.message)
local phase = status.phase
if phase == "Healthy" then
  hs.status = "Healthy"
elseif phase == "Degraded" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "Progressing" then
  hs.status = "Progressing"
else
  local stalled = conditionTrue(status, "Stalled")
  if stalled ~= nil then
    hs.status = "Degraded"
    message = described(stalled.reason, stalled.message)
  else
    hs.status = "Progressing"
    message = phase .. ": " .. message
  end
end
hs.message = message
return hs
