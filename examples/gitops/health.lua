-- Argo CD health check for lipsync.dev/LipSyncJob (argocd-cm: resource.customizations.health.lipsync.dev_LipSyncJob).
-- Reads the kstatus conditions the operator writes: Stalled=True -> Degraded (the job failed for
-- good), Ready=True -> Healthy (rendered), anything else -> Progressing with phase and progress.
local hs = { status = "Progressing", message = "Waiting for the lipsync operator" }
if obj.status == nil then
  return hs
end
local st = obj.status
local gen = obj.metadata and obj.metadata.generation
if gen ~= nil and st.observedGeneration ~= nil and st.observedGeneration < gen then
  hs.message = "Waiting for the operator to observe generation " .. tostring(gen)
  return hs
end
local ready, stalled = nil, nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Stalled" then stalled = c end
  end
end
local function describe(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then return c.reason .. ": " .. c.message end
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "LipSyncJob failed")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Rendered")
  return hs
end
local parts = {}
if st.phase ~= nil then table.insert(parts, st.phase) end
if st.progress ~= nil then table.insert(parts, tostring(st.progress) .. "%") end
if st.stage ~= nil and st.stage ~= "" then table.insert(parts, "stage " .. st.stage) end
if #parts > 0 then
  hs.message = table.concat(parts, ", ")
elseif ready ~= nil then
  hs.message = describe(ready, hs.message)
end
return hs
