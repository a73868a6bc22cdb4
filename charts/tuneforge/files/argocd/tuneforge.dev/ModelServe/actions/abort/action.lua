-- Abort the candidate in flight: tuneforge.dev/abort names its short digest; the operator scales
-- it down and lists it in status.rejected (the active color keeps serving).
if obj.status == nil or obj.status.preview == nil then
  error("no candidate is in flight (status.preview is empty): nothing to abort", 0)
end
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["tuneforge.dev/abort"] = obj.status.preview.shortDigest
return obj
