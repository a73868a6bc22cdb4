-- Promote the candidate in flight: tuneforge.dev/promote names its short digest.
if obj.status == nil or obj.status.preview == nil then
  error("no candidate is in flight (status.preview is empty): nothing to promote", 0)
end
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["tuneforge.dev/promote"] = obj.status.preview.shortDigest
return obj
