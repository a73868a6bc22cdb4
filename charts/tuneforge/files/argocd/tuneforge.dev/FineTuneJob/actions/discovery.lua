-- Actions Argo CD offers on a FineTuneJob. Suspend and resume write spec.suspend, which is how
-- the operator expresses them (phase Suspended; the training Job is suspended, not deleted): a
-- finished job (Succeeded, Failed) has nothing to suspend. Retry asks the operator to run a
-- Failed revision again (annotation tuneforge.dev/retry = the failed revision's number).
local actions = {}
local phase = nil
if obj.status ~= nil then phase = obj.status.phase end
local finished = phase == "Succeeded" or phase == "Failed"
local suspended = obj.spec ~= nil and obj.spec.suspend == true
actions["suspend"] = {["disabled"] = suspended or finished}
actions["resume"] = {["disabled"] = not suspended}
actions["retry"] = {["disabled"] = phase ~= "Failed"}
return actions
