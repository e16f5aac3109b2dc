-- Auto-routing of the test PACS: every stable ultrasound series goes to the LLNM listener
-- (modality "llnm" in orthanc.json). Results come back into the same study as SR/SEG/SC series,
-- which are not US, and anything the LLNM node itself sent is skipped: no routing loop.

local TARGET = 'llnm'
local LLNM_AET = 'LLNM'

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] ~= 'US' then
    return
  end
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local first = series['Instances'][1]
  if first ~= nil then
    local origin = ParseJson(RestApiGet('/instances/' .. first .. '/metadata?expand'))
    if origin['RemoteAET'] == LLNM_AET then
      return
    end
  end
  print('route-us: sending US series ' .. seriesId .. ' to ' .. TARGET)
  RestApiPost('/modalities/' .. TARGET .. '/store',
              DumpJson({ Resources = { seriesId }, Synchronous = false }, true))
end
