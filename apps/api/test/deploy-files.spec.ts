/**
 * docker/ cannot be run here (no Docker engine), so this keeps it honest instead: every file
 * parses; every environment key it sets is one the api accepts, with values the api's own
 * validation accepts; ports, routes and probe paths match the app; replicas × pool capacity
 * fits the server or the pooler in front of it.
 */
import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { createApp } from '../src/bootstrap.js';
import { resolveDbPoolConfig } from '@db-pool/db-pool';
import { ACCEPTED_ENV_KEYS, readEnvironment } from '../src/environment.js';

const docker = fileURLToPath(new URL('../../../docker/', import.meta.url));
const read = (path: string) => readFileSync(join(docker, path), 'utf8');
const runbook = () => readFileSync(fileURLToPath(new URL('../../../docs/runbook.md', import.meta.url)), 'utf8');
const SUPERUSER_RESERVED = 3; // PostgreSQL's default superuser_reserved_connections
const hasAmtool = spawnSync('amtool', ['--version']).status === 0;

function files(dir = docker): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path.slice(docker.length)];
  });
}

function ini(text: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let section = '';
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith(';') || line.startsWith('#')) continue;
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = header[1];
      out[section] = {};
      continue;
    }
    const kv = /^([A-Za-z_][\w.]*)\s*=\s*(.*)$/.exec(line);
    if (!kv || !section) throw new Error(`line ${i + 1} is not "key = value" inside a [section]: ${raw}`);
    out[section][kv[1]] = kv[2];
  }
  return out;
}

type K8sEnv = { name: string; value?: string; valueFrom?: unknown }[];
const compose = () => parse(read('compose.yml'));
const k8s = () => parseAllDocuments(read('k8s/deployment.yaml')).map((d) => d.toJS());
const deployment = () => k8s().find((d) => d.kind === 'Deployment');
const container = () => deployment().spec.template.spec.containers[0];

interface AlertRule {
  alert: string;
  expr: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
const alertRules = (): AlertRule[] => parse(read('prometheus/alerts.yml')).groups.flatMap((g: { rules: AlertRule[] }) => g.rules);
/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
const slug = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
/** `alertname="X"` matchers of an Alertmanager rule, as { alertname: 'X' }. */
const matchers = (list: string[] = []) => Object.fromEntries(list.map((m) => /^(\w+)="([^"]*)"$/.exec(m)!.slice(1, 3) as [string, string]));

describe('docker/ and Kubernetes files agree with the app', () => {
  it('compose runs Grafana with the dashboard and its Prometheus data source provisioned', () => {
    const grafana = compose().services.grafana as { volumes: string[]; depends_on: string[] };
    expect(grafana.volumes).toEqual(
      expect.arrayContaining([
        './grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro',
        './grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro',
        './grafana/dashboards:/var/lib/grafana/dashboards:ro',
      ]),
    );
    expect(grafana.depends_on).toContain('prometheus');
    const source = parse(read('grafana/provisioning/datasources/prometheus.yml')) as { datasources: { uid: string; url: string }[] };
    expect(source.datasources[0].url).toBe('http://prometheus:9090');
    const provider = parse(read('grafana/provisioning/dashboards/db-pool.yml')) as { providers: { options: { path: string } }[] };
    expect(provider.providers[0].options.path).toBe('/var/lib/grafana/dashboards');
    // Every panel names the provisioned data source.
    const dashboard = JSON.parse(read('grafana/dashboards/db-pool.json')) as { panels: { type: string; datasource?: { uid: string } }[] };
    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) expect(panel.datasource?.uid).toBe(source.datasources[0].uid);
  });

  it('every file parses', () => {
    const all = files();
    expect(all).toEqual(
      expect.arrayContaining([
        'Dockerfile',
        'compose.yml',
        'k8s/deployment.yaml',
        'prometheus/alerts.yml',
        'prometheus/prometheus.yml',
        'alertmanager/alertmanager.yml',
        'grafana/dashboards/db-pool.json',
        'grafana/provisioning/datasources/prometheus.yml',
        'grafana/provisioning/dashboards/db-pool.yml',
        'pgbouncer/pgbouncer.ini',
      ]),
    );
    for (const file of all) {
      if (/\.ya?ml$/.test(file)) {
        for (const doc of parseAllDocuments(read(file))) expect(doc.errors).toEqual([]);
      } else if (file.endsWith('.json')) {
        expect(() => JSON.parse(read(file)) as unknown).not.toThrow();
      } else if (file.endsWith('.ini')) {
        expect(() => ini(read(file))).not.toThrow();
      } else if (file.endsWith('Dockerfile')) {
        const instructions = read(file)
          .replace(/\\\n/g, ' ')
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l && !l.startsWith('#'))
          .map((l) => l.split(/\s+/)[0]);
        for (const instruction of instructions)
          expect(['FROM', 'WORKDIR', 'COPY', 'RUN', 'ENV', 'USER', 'EXPOSE', 'HEALTHCHECK', 'CMD', 'ARG', 'LABEL']).toContain(instruction);
      } else if (file.endsWith('.sh')) {
        execFileSync('sh', ['-n', join(docker, file)]); // parses as a POSIX shell script
      } else if (file.endsWith('userlist.txt')) {
        for (const line of read(file).trim().split('\n')) expect(line).toMatch(/^"[^"]+" "[^"]+"$/);
      } else {
        throw new Error(`no check for docker/${file}: add one`);
      }
    }
  });

  it('every environment key in compose and Kubernetes is one the api accepts, with values it accepts', () => {
    const fromCompose: Record<string, string> = compose().services.api.environment;
    const fromK8s = Object.fromEntries((container().env as K8sEnv).map((e) => [e.name, e.value ?? 'postgres://from-secret:x@db:5432/app']));
    for (const env of [fromCompose, fromK8s]) {
      for (const key of Object.keys(env)) expect(ACCEPTED_ENV_KEYS).toContain(key);
      expect(() => readEnvironment(env)).not.toThrow();
    }
    expect((container().env as K8sEnv).find((e) => e.name === 'DATABASE_URL')?.valueFrom).toEqual({
      secretKeyRef: { name: 'db-pool-api-db', key: 'url' },
    });
    const secret = parse(read('k8s/secret.example.yaml'));
    expect(secret).toMatchObject({ kind: 'Secret', metadata: { name: 'db-pool-api-db' } });
    expect(Object.keys(secret.stringData)).toEqual(['url']);
  });

  it("Kubernetes: the api's whole shutdown (delay, request drain, pool grace) fits in the pod's termination grace", () => {
    const env = Object.fromEntries((container().env as K8sEnv).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
    const { shutdownDelayMs, shutdownTimeoutMs } = readEnvironment({ ...env, DATABASE_URL: 'postgres://x@db/app' });
    const poolGraceMs = resolveDbPoolConfig({ env: { ...env, DATABASE_URL: 'postgres://x@db/app' } }).shutdownGraceMs;
    expect(shutdownDelayMs + shutdownTimeoutMs + poolGraceMs).toBeLessThan(
      deployment().spec.template.spec.terminationGracePeriodSeconds * 1000,
    );
  });

  it("Kubernetes: every probe waits longer than the app's health timeout, so its 503 and the reason arrive before the kubelet gives up", () => {
    const env = Object.fromEntries((container().env as K8sEnv).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
    const { healthTimeoutMs } = resolveDbPoolConfig({ env: { ...env, DATABASE_URL: 'postgres://x@db/app' } });
    const KUBELET_DEFAULT_TIMEOUT_SECONDS = 1;
    for (const name of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
      const probe = container()[name] as { timeoutSeconds?: number; periodSeconds?: number };
      const timeoutMs = (probe.timeoutSeconds ?? KUBELET_DEFAULT_TIMEOUT_SECONDS) * 1000;
      // At least a second past the app's own bound: the answer still has to be written and sent.
      expect({ probe: name, enough: timeoutMs - healthTimeoutMs >= 1000 }).toEqual({ probe: name, enough: true });
      // A probe that may outlast its period would run back to back.
      expect({ probe: name, fitsPeriod: timeoutMs <= (probe.periodSeconds ?? 10) * 1000 }).toEqual({ probe: name, fitsPeriod: true });
    }
  });

  it('ports agree: Dockerfile, compose, Kubernetes, Prometheus, PgBouncer', () => {
    const dockerfile = read('Dockerfile');
    const port = Number(/^EXPOSE (\d+)$/m.exec(dockerfile)![1]);
    expect(dockerfile).toContain(`PORT=${port}`);
    expect(Number(compose().services.api.environment.PORT)).toBe(port);
    expect(compose().services.api.expose.map(Number)).toContain(port);
    expect(container().ports[0].containerPort).toBe(port);
    expect(Number((container().env as K8sEnv).find((e) => e.name === 'PORT')!.value)).toBe(port);
    expect(Number(deployment().spec.template.metadata.annotations['prometheus.io/port'])).toBe(port);
    const scrape = parse(read('prometheus/prometheus.yml')).scrape_configs[0];
    expect(scrape.dns_sd_configs[0].port).toBe(port);
    expect(scrape.dns_sd_configs[0].names).toEqual(['api']);

    const bouncer = ini(read('pgbouncer/pgbouncer.ini'));
    const viaBouncer = new URL(compose().services.api.environment.DATABASE_URL);
    expect(viaBouncer.hostname).toBe('pgbouncer');
    expect(Number(viaBouncer.port)).toBe(Number(bouncer.pgbouncer.listen_port));
    expect(bouncer.pgbouncer.pool_mode).toBe('transaction');
    const admin = new URL(compose().services.api.environment.DB_PGBOUNCER_ADMIN_URL);
    expect([admin.hostname, admin.port, admin.pathname]).toEqual(['pgbouncer', bouncer.pgbouncer.listen_port, '/pgbouncer']);
    expect(bouncer.pgbouncer.admin_users.split(/\s*,\s*/)).toContain(decodeURIComponent(admin.username));
    expect(bouncer.databases[viaBouncer.pathname.slice(1)]).toMatch(/host=postgres port=5432/);
    expect(compose().services.pgbouncer.ports).toContain(`${bouncer.pgbouncer.listen_port}:${bouncer.pgbouncer.listen_port}`);
    const rules = parse(read('prometheus/prometheus.yml')).rule_files[0];
    expect(compose().services.prometheus.volumes).toContain(`./prometheus/alerts.yml:${rules}:ro`);

    // The standby: the api reads from it; it streams from the primary service, which lets it in.
    const services = compose().services;
    const replica = new URL(services.api.environment.DB_REPLICA_URLS);
    expect(services[replica.hostname]).toBeDefined();
    expect(services[replica.hostname].ports).toContain(`5433:${replica.port}`);
    expect(services.api.depends_on).toContain(replica.hostname);
    const standbyScript = read('postgres/standby-entrypoint.sh');
    expect(standbyScript).toContain('-h postgres -p 5432');
    expect(services[replica.hostname].volumes).toContain('./postgres/standby-entrypoint.sh:/standby-entrypoint.sh:ro');
    expect(services.postgres.volumes).toContain('./postgres/primary-replication.sh:/docker-entrypoint-initdb.d/10-replication.sh:ro');
    expect(read('postgres/primary-replication.sh')).toContain('host replication');
  });

  it('replicas × pool capacity fits the server, or the pooler in front of it', () => {
    const maxConnections = Number(/max_connections=(\d+)/.exec(compose().services.postgres.command.join(' '))![1]);
    const available = maxConnections - SUPERUSER_RESERVED;
    const capacity = (env: Record<string, string>) => Number(env.DB_POOL_SIZE ?? 20) + Number(env.DB_MAX_OVERFLOW ?? 40);

    const k8sEnv = Object.fromEntries((container().env as K8sEnv).map((e) => [e.name, e.value ?? '']));
    const k8sReplicas = deployment().spec.replicas;
    expect(Number(k8sEnv.DB_POOL_EXPECTED_REPLICAS)).toBe(k8sReplicas);
    // a rolling update must not add a pool past the budget
    expect(deployment().spec.strategy.rollingUpdate.maxSurge).toBe(0);
    expect(k8sReplicas * capacity(k8sEnv)).toBeLessThanOrEqual(available);

    const api = compose().services.api;
    const bouncer = ini(read('pgbouncer/pgbouncer.ini')).pgbouncer;
    expect(Number(api.environment.DB_POOL_EXPECTED_REPLICAS)).toBe(api.deploy.replicas);
    expect(api.deploy.replicas * capacity(api.environment)).toBeLessThanOrEqual(Number(bouncer.max_client_conn));
    expect(Number(bouncer.default_pool_size) + Number(bouncer.reserve_pool_size)).toBeLessThanOrEqual(available);
    // Reads go to the standby directly: every replica's replica pool must fit its max_connections.
    const standbyMax = Number(/max_connections=(\d+)/.exec(read('postgres/standby-entrypoint.sh'))![1]);
    expect(api.deploy.replicas * capacity(api.environment)).toBeLessThanOrEqual(standbyMax - SUPERUSER_RESERVED);

    const pdb = k8s().find((d) => d.kind === 'PodDisruptionBudget');
    expect(pdb.spec.minAvailable).toBeLessThan(k8sReplicas);
    expect(pdb.spec.selector).toEqual(deployment().spec.selector);
  });

  it("every alert has a section in docs/runbook.md, and its runbook_url is that section's anchor", () => {
    const headings = [...runbook().matchAll(/^## (.+)$/gm)].map((m) => m[1].trim());
    const anchors = headings.map(slug);
    const rules = alertRules();
    expect(rules.length).toBeGreaterThanOrEqual(6);
    const pages = new Set<string>();
    for (const rule of rules) {
      expect(headings).toContain(rule.alert);
      expect(rule.annotations.runbook_url).toBeDefined();
      const url = new URL(rule.annotations.runbook_url); // absolute: Alertmanager passes it on as a link
      expect(url.protocol).toBe('https:');
      expect(url.pathname).toMatch(/\/docs\/runbook\.md$/);
      expect(anchors).toContain(url.hash.slice(1));
      expect(url.hash.slice(1)).toBe(slug(rule.alert));
      pages.add(url.origin + url.pathname);
    }
    expect(pages.size).toBe(1); // one base to change (docs/runbook.md, "Changing the runbook links")

    // promtool compares annotations exactly: the unit tests must expect the same links.
    const byName = new Map(rules.map((r) => [r.alert, r]));
    const tests = parse(read('prometheus/alerts.test.yml')).tests as {
      alert_rule_test: { alertname: string; exp_alerts: { exp_annotations?: Record<string, string> }[] }[];
    }[];
    const expected = tests.flatMap((t) => t.alert_rule_test).flatMap((c) => c.exp_alerts.map((a) => ({ c, a })));
    for (const { c, a } of expected) expect(a.exp_annotations?.runbook_url).toBe(byName.get(c.alertname)!.annotations.runbook_url);
  });

  (hasAmtool || process.env.CI ? it : it.skip)(
    'amtool check-config accepts the Alertmanager example, which sends critical and warning alerts to different receivers',
    () => {
      if (!hasAmtool) throw new Error('amtool is not installed (Debian package prometheus-alertmanager); .ci/run installs it');
      const file = join(docker, 'alertmanager/alertmanager.yml');
      const check = spawnSync('amtool', ['check-config', file], { encoding: 'utf8' });
      expect({ status: check.status, output: check.stdout + check.stderr }).toMatchObject({ status: 0 });

      const config = parse(read('alertmanager/alertmanager.yml'));
      const receiverWith = (kind: string) => config.receivers.find((r: Record<string, unknown>) => kind in r)?.name;
      const expected: Record<string, string> = { critical: receiverWith('pagerduty_configs'), warning: receiverWith('slack_configs') };
      expect(expected.critical).not.toBe(expected.warning);
      const severities = new Set(alertRules().map((r) => r.labels.severity));
      expect([...severities].sort()).toEqual(['critical', 'warning']);
      for (const severity of severities) {
        const routed = spawnSync(
          'amtool',
          ['config', 'routes', 'test', `--config.file=${file}`, `severity=${severity}`, 'alertname=DbPoolTest', 'pool_name=default'],
          { encoding: 'utf8' },
        );
        expect(routed.stdout.trim()).toBe(expected[severity]);
      }
    },
  );

  it("Alertmanager's inhibit rules name alerts of alerts.yml, a critical one muting a warning", () => {
    const severity = new Map(alertRules().map((r) => [r.alert, r.labels.severity]));
    const rules = parse(read('alertmanager/alertmanager.yml')).inhibit_rules as Record<string, string[]>[];
    expect(rules.length).toBeGreaterThan(0);
    for (const rule of rules) {
      const source = matchers(rule.source_matchers);
      const target = matchers(rule.target_matchers);
      for (const name of [source.alertname, target.alertname]) if (name !== undefined) expect(severity.has(name)).toBe(true);
      expect(source.severity ?? severity.get(source.alertname)).toBe('critical');
      expect(target.severity ?? severity.get(target.alertname)).toBe('warning');
      expect(rule.equal).toEqual(expect.arrayContaining(['pool_name', 'instance']));
    }
  });

  it('compose runs Alertmanager with that file, and Prometheus sends its alerts there', () => {
    const services = compose().services;
    const alertmanager = services.alertmanager;
    expect(alertmanager.image).toMatch(/^prom\/alertmanager(:|$)/);
    // the image's default --config.file
    expect(alertmanager.volumes).toContain('./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro');
    const alerting = parse(read('prometheus/prometheus.yml')).alerting;
    const targets: string[] = alerting.alertmanagers.flatMap((a: { static_configs: { targets: string[] }[] }) =>
      a.static_configs.flatMap((c) => c.targets),
    );
    expect(targets).toEqual(['alertmanager:9093']);
    const [host, port] = targets[0].split(':');
    expect(services[host]).toBe(alertmanager);
    expect(alertmanager.ports).toContain(`${port}:${port}`);
    expect(services.prometheus.depends_on).toContain(host);
  });

  describe('against the running app', () => {
    let app: INestApplication;
    let base: string;
    beforeAll(async () => {
      app = await createApp({ url: process.env.DATABASE_URL, poolSize: 2, maxOverflow: 0, env: {} }, { logger: false });
      await app.listen(0, '127.0.0.1');
      base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await app?.close();
    });

    it('every probe path and the Docker health check answer 200', async () => {
      const c = container();
      const paths = [
        c.livenessProbe.httpGet.path,
        c.readinessProbe.httpGet.path,
        c.startupProbe.httpGet.path,
        /\/health\/\w+/.exec(read('Dockerfile'))![0],
      ];
      expect(new Set(paths)).toEqual(new Set(['/health/live', '/health/ready']));
      expect(c.livenessProbe.httpGet.path).toBe('/health/live'); // never the database
      for (const path of paths) expect((await fetch(`${base}${path}`)).status).toBe(200);
    });

    it('Prometheus scrapes a path that serves metrics, and every alert rule uses a metric the app exports', async () => {
      const scrape = parse(read('prometheus/prometheus.yml')).scrape_configs[0];
      expect(scrape.metrics_path).toBe(deployment().spec.template.metadata.annotations['prometheus.io/path']);
      const res = await fetch(`${base}${scrape.metrics_path}`);
      expect(res.status).toBe(200);
      const exported = new Set([...(await res.text()).matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]));
      const rules = parse(read('prometheus/alerts.yml')).groups.flatMap((g: { rules: { expr: string }[] }) => g.rules);
      expect(rules.length).toBeGreaterThanOrEqual(6);
      for (const rule of rules) {
        for (const [name] of rule.expr.matchAll(/\bdb_[a-z_]+\b/g)) expect(exported).toContain(name);
      }
    });
  });
});
