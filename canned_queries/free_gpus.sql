-- title: Free GPUs now
-- description: Hosts with at least :count free GPUs (1 to 16, default 1), best first, :limit rows (1 to 500, default 20) from :offset (default 0); total is the number of rows there are in all. Best first: hosts whose free GPUs hold the :count GPUs on one NUMA node joined by NVLink (fit 2), then on one NUMA node (fit 1), then the others (fit 0); among those the fewest free GPUs left over (spare = free_gpus - :count: a whole free node is kept for a whole-node job while a smaller host fits), then the most free memory, then by name. A GPU is free when it has no compute process, is not allocated to a Slurm job (the agent reads scontrol show job -d where Slurm is installed: a job's GPUs are held from allocation, before its first CUDA process), utilization.gpu, utilization.encoder and utilization.decoder ≤ :max_util % (default from config, 10), MIG disabled (a MIG GPU is never offered whole: for :count 1 its free GPU instances are offered one per row instead, with mig_profile and env CUDA_VISIBLE_DEVICES=MIG-<uuid>; a GPU instance is free when every one of its compute instances was read from nvidia-smi's table within 300 s of the report and runs no process, and every process on that GPU is placed in an instance; a GPU instance split into several compute instances is offered once, as the compute instance with the most SMs, because its compute instances share its memory; docs/api.md) and at least :min_free_mib MiB free as the driver reports memory.free (default 0); :model filters by name (substring), :group by host group (a server in group :group from any source: agent config, Slurm partition, admin; empty = all). Only hosts reporting now without a problem are offered: offline, stale, error (GPU collection failing, a GPU lost, marked faulty) and maintenance hosts, and GPUs marked maintenance/fault or missing, are left out. free_gpus counts every free GPU of the host and vendor, free_indexes lists them (nvidia-smi indexes, ascending). One row per host and vendor (a job runs on one vendor's GPUs). visible_devices lists the :count GPUs to use by index — for :count > 1 a set on one NUMA node joined by NVLink where nvidia-smi topo -m shows one (link: the weakest connection inside the set, NV<n> = n bonded NVLinks, else PIX/PXB/PHB/NODE/SYS; numa_node: their NUMA node), then the most free memory — and env the variable to set: NVIDIA CUDA_VISIBLE_DEVICES (nvidia-smi indexes, with CUDA_DEVICE_ORDER=PCI_BUS_ID; also in cuda_visible_devices), AMD ROCR_VISIBLE_DEVICES (HIP_VISIBLE_DEVICES takes the same indexes; ROCR_VISIBLE_DEVICES also takes the GPU-… ids in gpu_uuids), Intel ZE_AFFINITY_MASK; gpu_uuids the same GPUs by UUID.
with params as (
  select
    cast(coalesce(nullif(:min_free_mib, ''), 0) as integer) as min_free,
    cast(coalesce(nullif(:max_util, ''), :_config_free_max_util) as real) as max_util,
    -- 1..16 (gpu_set()'s bound, security review N1)
    min(16, max(1, cast(coalesce(nullif(:count, ''), 1) as integer))) as want,
    coalesce(:model, '') as model,
    -- One page of hosts (issue 24 item 4): gpu_set() runs for these rows only.
    min(500, max(1, cast(coalesce(nullif(:limit, ''), 20) as integer))) as page_size,
    max(0, cast(coalesce(nullif(:offset, ''), 0) as integer)) as page_start
),
-- A free GPU (the conditions of the description). Not materialized: each use below reads gpus
-- through its own plan (every online server's GPUs by gpus_server once for the aggregates, one
-- page host's GPUs for gpu_set()), never a copy of every free GPU searched through an automatic index.
free as not materialized (
  select
    g.id as gpu_id, g.server_id, g.vendor, g.gpu_index, g.uuid, g.name, g.numa_node,
    coalesce(g.memory_free_mib, g.memory_total_mib - coalesce(g.memory_used_mib, 0)) as free_mib
  from gpus g
  join server_state s on s.id = g.server_id
  join params p
  where s.state = 'online'
    and g.present and g.status = 'active'
    and g.process_count = 0
    and g.slurm_job is null
    and max(coalesce(g.utilization_gpu, 0), coalesce(g.utilization_encoder, 0), coalesce(g.utilization_decoder, 0))
        <= p.max_util
    and not coalesce(g.mig_mode, 0)
    and coalesce(g.memory_free_mib, g.memory_total_mib - coalesce(g.memory_used_mib, 0)) >= p.min_free
    and (p.model = '' and g.name is not null or instr(lower(g.name), lower(p.model)) > 0)  -- no lower() per GPU without :model
    and (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
    and (coalesce(:group, '') = '' or g.server_id in (select server_id from server_groups where grp = :group))
),
-- One pass over the free GPUs: per host, vendor and NUMA node, how many (k), the least free memory
-- and the free GPUs' nvidia-smi indexes as a bit set (bit i = GPU i, for indexes 0..62; wide is
-- set when an index lies outside, and the NVLink count below then reads the node's indexes as a list).
node_free as materialized (
  select f.server_id, f.vendor, f.numa_node,
    count(*) as k, min(f.free_mib) as least_free_mib,
    sum(distinct case when f.gpu_index between 0 and 62 then 1 << f.gpu_index end) as mask,
    min(f.gpu_index) as lo, max(f.gpu_index) as hi,
    max(f.gpu_index not between 0 and 62) as wide
  from free f
  group by f.server_id, f.vendor, f.numa_node
),
-- How well a NUMA node holds :count GPUs (only for :count > 1, NVIDIA, known NUMA node, k >= :count):
-- 2 = every pair of its free GPUs joined by NVLink (nvidia-smi topo -m in gpu_links, NV<n>; NVSwitch),
-- or for :count 2 one NVLink pair among them; else 1. The pairs are the node's links (primary key
-- range lo..hi) whose both ends are in the bit set, each pair once (gpu_a < gpu_b).
node_fit as (
  select n.*,
    case when p.want > 1 and n.vendor = 'nvidia' and n.numa_node is not null and n.k >= p.want then 1 +
      case when n.wide then
        (select case when p.want = 2 then count(*) > 0 else count(*) = n.k * (n.k - 1) / 2 end
         from (select ',' || group_concat(f.gpu_index) || ',' as list from free f
               where f.server_id = n.server_id and f.vendor = n.vendor and f.numa_node = n.numa_node) w
         join gpu_links l on l.server_id = n.server_id
         where l.gpu_b > l.gpu_a and instr(w.list, ',' || l.gpu_a || ',') and instr(w.list, ',' || l.gpu_b || ',')
           and l.link like 'NV%')
      when p.want = 2 then
        exists (select 1 from gpu_links l
                where l.server_id = n.server_id and l.gpu_a between n.lo and n.hi and l.gpu_b > l.gpu_a
                  and l.gpu_b <= n.hi and (n.mask >> l.gpu_a) & 1 and (n.mask >> l.gpu_b) & 1
                  and l.link like 'NV%')
      else
        (select count(*) from gpu_links l
         where l.server_id = n.server_id and l.gpu_a between n.lo and n.hi and l.gpu_b > l.gpu_a
           and l.gpu_b <= n.hi and (n.mask >> l.gpu_a) & 1 and (n.mask >> l.gpu_b) & 1
           and l.link like 'NV%') = n.k * (n.k - 1) / 2
      end
    end as fit
  from node_free n join params p
),
-- Per host and vendor: its free GPUs, and how well it holds :count GPUs (fit): its best NUMA node's
-- (any host for :count 1: one GPU always fits), 0 = spread over NUMA nodes or topology unknown.
-- gpu_set() then picks the GPUs of the page's hosts.
ranked as (
  select n.server_id, n.vendor, sum(n.k) as free_gpus,
    min(n.least_free_mib) as least_free_mib, sum(n.k) - p.want as spare,
    case when p.want = 1 then 2 else coalesce(max(n.fit), 0) end as fit
  from node_fit n join params p
  group by n.server_id, n.vendor
  having sum(n.k) >= p.want
),
-- MIG (docs/api.md, free_gpus): the unit offered is a GPU instance (GI), the memory a job gets alone.
-- A GI is free when each of its compute instances (CI) has a known state (read from nvidia-smi's table,
-- sampled_at within 300 s of the report) and none runs a process: CIs of one GI share its memory, so a
-- CI beside a busy sibling is not free. A GPU with a compute process the agent could not place in an
-- instance (started after the last table read), or allocated to a Slurm job, offers none. A free GI is
-- offered once, as its CI with the most SMs (CUDA sees one MIG device per process):
-- env CUDA_VISIBLE_DEVICES=MIG-<uuid>.
mig_gi as (
  select m.server_id, m.gpu_id, m.gpu_instance_id, sum(m.process_count) as busy,
    sum(m.sampled_at is null or m.memory_total_mib is null or m.memory_used_mib is null
        or m.ts - m.sampled_at > 300) as unknown
  from mig_devices m
  where (:_scope_all or m.server_id in (select value from json_each(:_scope_servers)))
    and (coalesce(:group, '') = '' or m.server_id in (select server_id from server_groups where grp = :group))
  group by m.server_id, m.gpu_id, m.gpu_instance_id
),
mig_placed as (
  select m.gpu_id, sum(m.process_count) as placed from mig_devices m group by m.gpu_id
),
mig_free as (
  select m.server_id, coalesce(s.display_name, s.hostname) as server, s.name_key, m.uuid, m.profile, g.name,
    m.memory_total_mib - m.memory_used_mib as free_mib,
    row_number() over (partition by m.server_id, m.gpu_id, m.gpu_instance_id
                       order by m.sm_count desc, m.mig_index) as pick
  from mig_devices m
  join mig_gi gi on gi.server_id = m.server_id and gi.gpu_id = m.gpu_id and gi.gpu_instance_id = m.gpu_instance_id
  join mig_placed mp on mp.gpu_id = m.gpu_id
  join gpus g on g.id = m.gpu_id
  join server_state s on s.id = m.server_id
  join params p
  where s.state = 'online'
    and g.present and g.status = 'active' and g.mig_mode = 1 and p.want = 1
    and g.slurm_job is null
    and gi.busy = 0 and gi.unknown = 0
    and g.process_count = mp.placed
    and m.memory_total_mib - m.memory_used_mib >= p.min_free
    and instr(lower(g.name || ' ' || coalesce(m.profile, '')), lower(p.model)) > 0
),
-- Every offer (whole GPUs and MIG instances) in order; one page of them. The name's order is
-- servers.name_key (natural_key() of the shown name, stored with the name: migration 29).
offers as (
  select r.server_id, coalesce(s.display_name, s.hostname) as server, s.name_key, r.vendor, r.free_gpus,
    r.least_free_mib, null as mig_uuid, null as mig_profile, null as mig_model, r.fit, r.spare
  from ranked r
  join servers s on s.id = r.server_id
  union all
  select m.server_id, m.server, m.name_key, 'nvidia', 1, m.free_mib, m.uuid, m.profile,
    m.name || ' MIG ' || coalesce(m.profile, '?'), 2, 0
  from mig_free m
  where m.pick = 1
),
page as materialized (
  select o.*, count(*) over () as total
  from offers o
  order by o.fit desc, o.spare, o.least_free_mib desc, o.name_key, o.vendor, o.server_id, o.mig_uuid
  limit (select page_size from params) offset (select page_start from params)
),
-- gpu_set() (server_monitor/core/topology.py): the :count GPUs to use on one page host, one
-- NUMA node and NVLink first (nvidia-smi topo -m, gpu_links), then the most free memory.
-- The page's hosts' free GPUs, for gpu_set().
page_candidates as materialized (
  select pg.*,
    (select json_group_array(json_object('i', f.gpu_index, 'numa', f.numa_node, 'free', f.free_mib, 'uuid', f.uuid,
                                         'name', f.name))
     from (select * from free f where f.server_id = pg.server_id and f.vendor = pg.vendor order by f.gpu_id) f)
      as candidates
  from page pg
  where pg.mig_uuid is null
  union all
  select pg.*, null from page pg where pg.mig_uuid is not null
),
chosen as materialized (
  select pg.*,
    case when pg.mig_uuid is null then
      gpu_set(pg.candidates,
              (select json_group_array(json_array(l.gpu_a, l.gpu_b, l.link)) from gpu_links l
                where l.server_id = pg.server_id and pg.vendor = 'nvidia'),
              p.want) end as pick,
    -- the host's free GPUs by nvidia-smi index, ascending
    (select group_concat(i, ',') from (select json_extract(j.value, '$.i') as i from json_each(pg.candidates) j
                                       order by i)) as free_indexes
  from page_candidates pg join params p
)
select
  c.server_id,
  c.server,
  c.vendor,
  c.free_gpus,
  coalesce(c.mig_uuid, json_extract(c.pick, '$.devices')) as visible_devices,
  case when c.mig_uuid is not null then 'CUDA_VISIBLE_DEVICES=' || c.mig_uuid
    else case c.vendor when 'amd' then 'ROCR_VISIBLE_DEVICES=' when 'intel' then 'ZE_AFFINITY_MASK='
      else 'CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=' end || json_extract(c.pick, '$.devices') end as env,
  case when c.mig_uuid is not null then c.mig_uuid
    when c.vendor = 'nvidia' then json_extract(c.pick, '$.devices') end as cuda_visible_devices,
  coalesce(c.mig_uuid, json_extract(c.pick, '$.uuids')) as gpu_uuids,
  coalesce(json_extract(c.pick, '$.min_free'), c.least_free_mib) as min_free_mib,
  coalesce(c.mig_model, json_extract(c.pick, '$.models')) as gpu_models,
  c.mig_profile,
  json_extract(c.pick, '$.link') as link,
  json_extract(c.pick, '$.numa') as numa_node,
  c.free_indexes,
  c.fit,
  c.spare,
  c.total
from chosen c
order by c.fit desc, c.spare, c.least_free_mib desc, c.name_key, c.vendor, c.server_id, c.mig_uuid
