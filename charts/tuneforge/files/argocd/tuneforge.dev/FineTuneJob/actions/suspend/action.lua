-- Suspend the FineTuneJob: the operator suspends its training Job (phase Suspended).
if obj.spec.suspend == true then
  error("the FineTuneJob is already suspended (spec.suspend is true)", 0)
end
obj.spec.suspend = true
return obj
