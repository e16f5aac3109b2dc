-- Auto-routing of the test PACS: every stable ultrasound series, and every report (SR) series,
-- goes to the LLNM listener (modality "llnm" in orthanc.json); the listener groups them by study.
-- Results come back into the same study from the LLNM node's AE title: series it sent are never
-- routed, so there is no loop (and the listener also ignores its own output).

local TARGET = 'llnm'
local LLNM_AET = 'LLNM'
local ROUTED = { US = true, SR = true }

function OnStableSeries(seriesId, tags, metadata)
  if not ROUTED[tags['Modality']] then
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
  print('route-us: sending ' .. tags['Modality'] .. ' series ' .. seriesId .. ' to ' .. TARGET)
  RestApiPost('/modalities/' .. TARGET .. '/store',
              DumpJson({ Resources = { seriesId }, Synchronous = false }, true))
end
