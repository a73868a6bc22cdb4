-- Roll back to the previous version while its color is still warm: tuneforge.dev/abort names the
-- active version, and the operator switches the active Service back to the warm color (a
-- selector switch, no restart). The spec still asks for the aborted version, so the ModelServe
-- stays Degraded until Git moves on.
local status = obj.status
if status == nil or status.active == nil or status.rollout == nil or status.rollout.previousColor == nil then
  error("no previous color is warm (status.rollout.previousColor is empty): point the spec at an earlier version instead", 0)
end
if status.preview ~= nil then
  error("a rollout is in flight: abort it instead", 0)
end
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["tuneforge.dev/abort"] = status.active.shortDigest
return obj
