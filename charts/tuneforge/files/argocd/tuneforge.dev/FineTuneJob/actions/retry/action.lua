-- Retry the Failed FineTuneJob: the operator starts the next revision with the same spec (new
-- Jobs; the failed revision stays in status.history). tuneforge.dev/retry names the revision
-- that failed, so pressing retry twice is one request, and a later failure is a new one.
local status = obj.status
if status == nil or status.phase ~= "Failed" or status.revision == nil then
  local phase = "none"
  if status ~= nil and status.phase ~= nil then phase = status.phase end
  error("the FineTuneJob has not failed (status.phase is " .. phase .. "): nothing to retry", 0)
end
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["tuneforge.dev/retry"] = tostring(status.revision)
return obj
