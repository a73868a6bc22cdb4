-- Actions Argo CD offers on a ModelServe. Each is the operator's request annotation whose value
-- names the version it is about (tuneforge.dev/promote, /abort, /retry = a short digest), so a
-- stale request never applies to a later candidate:
--   promote  approve the candidate in flight (only asked for with rollout.autoPromotion false)
--   abort    roll the candidate in flight back (traffic never left the active color)
--   rollback abort naming the active version while the previous color is still warm: the
--            operator switches traffic back to it (rollout.previousColor is set only then)
--   retry    try the rejected version again
local actions = {}
local status = obj.status or {}
local autoPromotion = true
if obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.autoPromotion == false then
  autoPromotion = false
end
local inFlight = status.preview ~= nil
local warm = status.rollout ~= nil and status.rollout.previousColor ~= nil and status.active ~= nil
actions["promote"] = {["disabled"] = not inFlight or autoPromotion}
actions["abort"] = {["disabled"] = not inFlight}
actions["rollback"] = {["disabled"] = inFlight or not warm}
actions["retry"] = {["disabled"] = status.rejected == nil}
return actions
