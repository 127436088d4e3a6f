-- title: GPUs
-- description: Latest state of every GPU you may see. vendor: nvidia, amd or intel (AMD/Intel read from sysfs; fields a driver does not expose are null, see docs/agent.md). Units: utilization_* %, memory_* MiB, temperature_* °C, power_* W, clocks_* MHz. busy = any compute process or utilization.gpu/encoder/decoder ≥ 10 % in the server's newest report. health = ok / warning / critical with health_reasons (ECC, row remapping, reset needed, HW slowdown/thermal throttling, degraded PCIe link while busy). clocks_event_reasons: active throttle reasons by name; *_us: time per reason since driver load (µs); power_capped_h / thermal_slowdown_h the same in hours ("power capped 4 h" since the driver loaded); power_capped_today_h / thermal_slowdown_today_h: hours since the GPU's first sample of the day (throttle_today_since, epoch s; null without a sample today); the day starts at :day_start (epoch s of the viewer's local midnight, as the dashboard sends it; kept within the last 25 h) or, without it, at 00:00 UTC; throttle_day_start is the start used. memory_free_mib: memory.free as the driver reports it. present = 0 when the GPU was missing from its server's newest complete report.
-- "Today" starts at :day_start (epoch s: the viewer's local midnight, sent by the dashboard),
-- kept within the last 25 h (a day is at most 25 h long at a DST change); without it, the UTC day.
with day as (
  select max(cast(strftime('%s', 'now') as integer) - 90000, min(cast(strftime('%s', 'now') as integer),
    coalesce(cast(nullif(:day_start, '') as integer), cast(strftime('%s', 'now', 'start of day') as integer)))) as day_start
)
select
  g.server_id,
  coalesce(s.display_name, s.hostname) as server,
  s.state as server_status,
  g.id as gpu_id,
  g.gpu_index,
  g.uuid,
  g.vendor,
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
  g.temperature_junction_c,
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
  g.compute_partition,
  g.memory_partition,
  g.xgmi_links_down,
  g.driver_version,
  g.process_count,
  g.busy,
  g.health,
  g.health_reasons,
  g.gpu_state,
  g.clocks_event_reasons,
  g.utilization_encoder,
  g.utilization_decoder,
  g.encoder_sessions,
  g.memory_free_mib,
  g.pcie_link_gen_current,
  g.pcie_link_gen_max,
  g.pcie_link_width_current,
  g.pcie_link_width_max,
  g.temperature_gpu_tlimit_c,
  g.ecc_mode,
  g.ecc_mode_pending,
  g.ecc_errors_corrected_volatile_total,
  g.ecc_errors_corrected_aggregate_total,
  g.ecc_errors_uncorrected_aggregate_total,
  g.retired_pages_sbe,
  g.retired_pages_dbe,
  g.remapped_rows_correctable,
  g.remapped_rows_uncorrectable,
  g.remapped_rows_failure,
  g.gpu_recovery_action,
  g.sw_power_cap_us,
  g.hw_thermal_slowdown_us,
  g.sw_thermal_slowdown_us,
  g.hw_power_brake_slowdown_us,
  round(g.sw_power_cap_us / 3600e6, 1) as power_capped_h,
  case when g.sw_thermal_slowdown_us is not null or g.hw_thermal_slowdown_us is not null
    then round((coalesce(g.sw_thermal_slowdown_us, 0) + coalesce(g.hw_thermal_slowdown_us, 0)) / 3600e6, 1)
  end as thermal_slowdown_h,
  -- "Today": the counters' growth since the GPU's first sample of the current UTC day (one
  -- primary-key seek per GPU); a counter that went down (driver reloaded) counts from zero.
  case when g.sw_power_cap_us is not null and d.sw_power_cap_us is not null
    then round((case when g.sw_power_cap_us >= d.sw_power_cap_us then g.sw_power_cap_us - d.sw_power_cap_us
                     else g.sw_power_cap_us end) / 3600e6, 2)
  end as power_capped_today_h,
  case when d.ts is not null and (g.sw_thermal_slowdown_us is not null or g.hw_thermal_slowdown_us is not null)
    then round(((case when coalesce(g.sw_thermal_slowdown_us, 0) >= coalesce(d.sw_thermal_slowdown_us, 0)
                      then coalesce(g.sw_thermal_slowdown_us, 0) - coalesce(d.sw_thermal_slowdown_us, 0)
                      else coalesce(g.sw_thermal_slowdown_us, 0) end)
              + (case when coalesce(g.hw_thermal_slowdown_us, 0) >= coalesce(d.hw_thermal_slowdown_us, 0)
                      then coalesce(g.hw_thermal_slowdown_us, 0) - coalesce(d.hw_thermal_slowdown_us, 0)
                      else coalesce(g.hw_thermal_slowdown_us, 0) end)) / 3600e6, 2)
  end as thermal_slowdown_today_h,
  d.ts as throttle_today_since,
  d0.day_start as throttle_day_start,
  g.mig_mode_pending,
  g.cuda_version,
  g.xid_last,
  g.xid_last_ts,
  g.numa_node,
  g.cpu_affinity
from gpus g
join server_state s on s.id = g.server_id
cross join day d0
left join gpu_samples d on d.gpu_id = g.id and d.ts = (
  select f.ts from gpu_samples f
  where f.gpu_id = g.id and f.ts >= d0.day_start
    and (f.sw_power_cap_us is not null or f.sw_thermal_slowdown_us is not null or f.hw_thermal_slowdown_us is not null)
  order by f.ts limit 1)
where (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
order by s.name_key, g.server_id, g.gpu_index
