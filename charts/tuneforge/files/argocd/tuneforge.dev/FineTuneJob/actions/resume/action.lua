-- Resume a suspended FineTuneJob: spec.suspend back to false (a suspend edit alone never starts
-- a new revision, so this resumes the same run).
if obj.spec.suspend ~= true then
  error("the FineTuneJob is not suspended (spec.suspend is not true)", 0)
end
obj.spec.suspend = false
return obj
