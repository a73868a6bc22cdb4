-- Retry the rejected version: tuneforge.dev/retry names its short digest. An abort naming the
-- same version would keep it out, so that annotation goes.
local status = obj.status
if status == nil or status.rejected == nil then
  error("no version is rejected (status.rejected is empty): nothing to retry", 0)
end
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
local abort = obj.metadata.annotations["tuneforge.dev/abort"]
if abort ~= nil and (abort == status.rejected.shortDigest or abort == status.rejected.digest) then
  obj.metadata.annotations["tuneforge.dev/abort"] = nil
end
obj.metadata.annotations["tuneforge.dev/retry"] = status.rejected.shortDigest
return obj
