-- title: GPUs
-- description: Latest state of every GPU you may see. Units: utilization_* %, memory_* MiB, temperature_* °C, power_* W, clocks_* MHz. busy = any compute process or utilization.gpu ≥ 10 % in the server's newest report. present = 0 when the GPU was missing from its server's newest complete report.
select
  g.server_id,
  coalesce(s.display_name, s.hostname) as server,
  s.state as server_status,
  g.id as gpu_id,
  g.gpu_index,
  g.uuid,
  g.name,
  g.pci_bus_id,
  g.present,
  g.status as admin_status,
  g.status_note,
  g.last_ts,
  g.utilization_gpu,
  g.utilization_memory,
  g.memory_used_mib,
  g.memory_total_mib,
  g.memory_reserved_mib,
  g.temperature_gpu_c,
  g.temperature_memory_c,
  g.power_draw_w,
  g.power_limit_w,
  g.fan_speed,
  g.clocks_sm_mhz,
  g.clocks_mem_mhz,
  g.pstate,
  g.clocks_event_reasons_active,
  g.ecc_errors_uncorrected_volatile_total,
  g.retired_pages_pending,
  g.remapped_rows_pending,
  g.mig_mode,
  g.persistence_mode,
  g.driver_version,
  g.process_count,
  g.busy
from gpus g
join server_state s on s.id = g.server_id
where (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
order by server collate nocase, g.server_id, g.gpu_index
