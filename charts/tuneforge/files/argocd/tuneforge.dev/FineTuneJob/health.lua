-- Argo CD health of a tuneforge.dev FineTuneJob, from the generic status shape the operator
-- writes (phase, reason, message, observedGeneration, conditions), so fields a later version adds
-- (search trials, new phases) change nothing here. Uses only Lua's base library: argocd-cm
-- customizations run without the string library unless useOpenLibs is set.
local hs = {}

local function described(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then return message end
  if reason ~= nil then return reason end
  return ""
end

-- The generation the status describes: status.observedGeneration, or a condition written for a
-- newer generation (the operator stamps every condition with the generation it read).
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
  hs.message = "Waiting for the operator to observe the FineTuneJob"
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
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Validating" or phase == "Queued" or phase == "Running" or phase == "Evaluating" then
  hs.status = "Progressing"
  if phase == "Running" and status.progress ~= nil and status.progress.percent ~= nil and status.progress.display ~= nil then
    message = "Running " .. status.progress.display .. ": " .. message
  else
    message = phase .. ": " .. message
  end
else
  -- A phase this script does not know: the conditions decide, else it is under way.
  local failed = conditionTrue(status, "Failed")
  if failed ~= nil then
    hs.status = "Degraded"
    message = described(failed.reason, failed.message)
  elseif conditionTrue(status, "Succeeded") ~= nil then
    hs.status = "Healthy"
  else
    hs.status = "Progressing"
    message = phase .. ": " .. message
  end
end
hs.message = message
return hs
