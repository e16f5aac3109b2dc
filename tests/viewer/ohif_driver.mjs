// Walks studies through OHIF the way a radiologist would: study list -> viewer -> SR -> SEG -> key image.
// Reads a job (JSON) on stdin, prints one JSON line with what it saw; screenshots go to job.outDir.
// A job is one walk (study, sr, seg, key... at its top level) or several (job.walks: the same keys each,
// walked one after the other in one browser session; out.walks[i] holds what each saw).
// Every step has its own timeout and the whole run a hard deadline, so a broken viewer cannot hang CI.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const job = JSON.parse(fs.readFileSync(0, 'utf8'));
const stepTimeout = job.stepTimeoutMs ?? 60000;
const deadline = Date.now() + (job.totalTimeoutMs ?? 170000);
const out = { steps: {}, console: [], pageErrors: [], failedRequests: [], timingsMs: {} };
const walks = job.walks ?? [job];
let walk = walks[0];
let rec = out; // the record of the walk in progress (out itself for a single walk)
let current = 'start';

const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  // Loopback only: no other host name resolves (a request elsewhere shows up in failedRequests).
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'];
const ctx = await chromium.launchPersistentContext(job.profileDir, {
  executablePath: job.chromium ?? '/usr/bin/chromium',
  headless: true,
  args: flags,
  viewport: { width: 1400, height: 900 },
});
const hardStop = setTimeout(async () => {
  out.aborted = `deadline of ${job.totalTimeoutMs ?? 170000} ms passed during ${current}`;
  fs.writeSync(1, JSON.stringify(out) + '\n');
  process.exit(3);
}, Math.max(1000, deadline - Date.now()));

const page = ctx.pages()[0] ?? (await ctx.newPage());
page.setDefaultTimeout(stepTimeout);
page.on('console', (m) => {
  // Errors and warnings, and OHIF's own notes on SR/SEG loading (kept for the artefact, not asserted).
  const note = m.type() === 'log' && /measurement|rehydrat|segmentation|structured report/i.test(m.text());
  if (m.type() === 'error' || m.type() === 'warning' || note || job.logAll) {
    out.console.push({ walk: walk.prefix, step: current, type: m.type(), text: m.text().slice(0, 1000) });
  }
});
page.on('pageerror', (e) => out.pageErrors.push({ walk: walk.prefix, step: current, text: String(e?.stack ?? e).slice(0, 2000) }));
page.on('requestfailed', (r) => out.failedRequests.push({ walk: walk.prefix, step: current, url: r.url(), error: r.failure()?.errorText }));
page.on('response', (r) => {
  if (r.status() >= 400) out.failedRequests.push({ walk: walk.prefix, step: current, url: r.url(), status: r.status() });
});

const shot = async (name) => {
  const file = path.join(job.outDir, `${walk.prefix}-${name}.png`);
  await page.screenshot({ path: file });
  return file;
};

async function skipTour() {
  const skip = page.getByText('Skip all', { exact: true });
  if (await skip.isVisible().catch(() => false)) await skip.click().catch(() => {});
}

async function visibleText() {
  // innerText leaves out SVG annotation text in some layouts: collect <text> nodes explicitly too.
  return page.evaluate(() => ({
    text: document.body.innerText,
    annotations: [...document.querySelectorAll('svg.svg-layer g[data-annotation-uid]')].map((g) => ({
      uid: g.getAttribute('data-annotation-uid'),
      lines: [...g.querySelectorAll('tspan')].map((t) => t.textContent),
      text: g.textContent,
    })),
  }));
}

async function viewportState() {
  // The active viewport's canvas: how much of it shows image content, and where the annotations are.
  return page.evaluate(() => {
    const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas')];
    const res = { canvases: [] };
    for (const c of canvases) {
      const r = c.getBoundingClientRect();
      let lit = null;
      try {
        const g = c.getContext('2d');
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 16) if (d[i] + d[i + 1] + d[i + 2] > 60) n++;
        lit = n / (d.length / 16);
      } catch (e) {
        lit = `unreadable: ${e}`;
      }
      res.canvases.push({ x: r.x, y: r.y, width: r.width, height: r.height, lit });
    }
    res.shapes = [...document.querySelectorAll('svg.svg-layer path, svg.svg-layer polyline, svg.svg-layer line, svg.svg-layer ellipse, svg.svg-layer circle')]
      .map((s) => {
        const b = s.getBoundingClientRect();
        return { tag: s.tagName, x: b.x, y: b.y, width: b.width, height: b.height };
      })
      .filter((b) => b.width > 0 || b.height > 0);
    return res;
  });
}

async function segmentBoxes(colours) {
  // Where each segment colour shows on the active canvas, in page pixels: the bounding box (1st to 99th
  // percentile, so a stray pixel does not count) of the pixels whose hue is that of the colour. The
  // ultrasound image is grey, so a pixel whose channels differ as the colour's do is the overlay.
  return page.evaluate((colours) => {
    const c = document.querySelector('canvas.cornerstone-canvas');
    const r = c.getBoundingClientRect();
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const sx = r.width / c.width;
    const sy = r.height / c.height;
    const pct = (a, q) => a[Math.min(a.length - 1, Math.floor(q * a.length))];
    return colours.map((rgb) => {
      const hi = [0, 1, 2].filter((k) => rgb[k] >= 128);
      const lo = [0, 1, 2].filter((k) => rgb[k] < 128);
      const xs = [];
      const ys = [];
      for (let y = 0; y < c.height; y++) {
        for (let x = 0; x < c.width; x++) {
          const i = 4 * (y * c.width + x);
          const low = Math.max(...lo.map((k) => d[i + k]));
          if (hi.every((k) => d[i + k] > low + 40)) {
            xs.push(x);
            ys.push(y);
          }
        }
      }
      if (!xs.length) return { rgb, pixels: 0 };
      xs.sort((a, b) => a - b);
      ys.sort((a, b) => a - b);
      return {
        rgb, pixels: xs.length,
        x0: r.x + pct(xs, 0.01) * sx, y0: r.y + pct(ys, 0.01) * sy,
        x1: r.x + (pct(xs, 0.99) + 1) * sx, y1: r.y + (pct(ys, 0.99) + 1) * sy,
      };
    });
  }, colours);
}

async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  const result = { ok: false };
  rec.steps[name] = result;
  try {
    if (Date.now() > deadline) throw new Error('no time left');
    Object.assign(result, await fn());
    result.ok = true;
  } catch (e) {
    result.error = String(e?.message ?? e).slice(0, 1500);
  }
  try {
    result.screenshot = await shot(name);
  } catch (e) {
    result.screenshotError = String(e);
  }
  rec.timingsMs[name] = Date.now() - t0;
  return result.ok;
}

function failOnError() {
  // Rejects as soon as the viewer logs an error or throws during this step (no need to wait it out).
  const seen = out.console.length + out.pageErrors.length;
  let timer;
  const p = new Promise((_, reject) => {
    timer = setInterval(() => {
      const fresh = [...out.console.slice(0), ...out.pageErrors]
        .filter((m) => m.walk === walk.prefix && m.step === current && (m.type === undefined || m.type === 'error'));
      if (out.console.length + out.pageErrors.length > seen && fresh.length) {
        clearInterval(timer);
        reject(new Error(`viewer error: ${fresh[0].text.slice(0, 300)}`));
      }
    }, 250);
  });
  p.cancel = () => clearInterval(timer);
  p.catch(() => {});
  return p;
}

async function openSeries(label) {
  // The study browser lists derived series (SR, SEG) as rows: double-click loads one into the viewport.
  const item = page.getByText(label, { exact: false }).first();
  await item.waitFor({ state: 'visible' });
  await item.dblclick();
}

async function walkStudy(w) {
  if (w.list !== false) {
    await step('list', async () => {
      await page.goto(job.url + '/');
      await skipTour();
      const row = page.getByText(w.expectListText ?? 'SEG', { exact: false }).first();
      await row.waitFor({ state: 'visible' });
      await page.waitForTimeout(500);
      return await visibleText();
    });
  }

  await step('image', async () => {
    await page.goto(`${job.url}/viewer?StudyInstanceUIDs=${w.study}`);
    await page.locator('canvas.cornerstone-canvas').first().waitFor({ state: 'visible' });
    await skipTour();
    // The image is drawn asynchronously after the metadata: wait until the canvas has content.
    await page.waitForFunction(() => {
      const c = document.querySelector('canvas.cornerstone-canvas');
      if (!c || !c.width) return false;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < d.length; i += 64) if (d[i] + d[i + 1] + d[i + 2] > 60) return true;
      return false;
    }, null, { polling: 500 });
    await skipTour();
    await page.waitForTimeout(1000);
    return { ...(await visibleText()), ...(await viewportState()) };
  });

  async function srStep(name, sr) {
    let retried = false;
    await step(name, async () => {
      await openSeries(sr.label);
      await page.waitForTimeout(1500);
      await skipTour();
      if (sr.expect) {
        // The SR's text box is SVG drawn over the image once the referenced image is matched and the
        // viewport renders again. OHIF 3.13 sometimes adds the annotation after the viewport's last
        // render and then never draws it (the image shown is the referenced one, the annotation is in its
        // state, the SVG layer stays empty; reloading repeats the same race, 2026-12-04: all three reloads
        // of one study failed while a reader's first touch of the image draws it). So the recoveries, in
        // order, are what a reader does: resize the window (the viewport renders again), step to the next
        // image and back, then reload and open the SR again. Each one used is reported in `retries`.
        const drawn = (timeout) => page.waitForFunction(
          (want) => [...document.querySelectorAll('svg.svg-layer g[data-annotation-uid]')]
            .some((g) => g.textContent.includes(want)),
          sr.expect, { polling: 500, timeout });
        const size = page.viewportSize();
        const recoveries = [
          ['resize', async () => {
            await page.setViewportSize({ width: size.width - 40, height: size.height });
            await page.waitForTimeout(1000);
            await page.setViewportSize(size);
          }],
          ['scroll', async () => {
            await page.locator('canvas.cornerstone-canvas').first().hover();
            await page.mouse.wheel(0, 120);
            await page.waitForTimeout(1000);
            await page.mouse.wheel(0, -120);
          }],
          ['reload', async () => {
            await page.reload();
            await page.locator('canvas.cornerstone-canvas').first().waitFor({ state: 'visible' });
            await skipTour();
            await openSeries(sr.label);
          }],
        ];
        for (let attempt = 0; ; attempt++) {
          try {
            await drawn(attempt === 0 ? Math.min(15000, stepTimeout / 3) : stepTimeout / 4);
            break;
          } catch (err) {
            if (attempt === recoveries.length) throw err;
            retried = true;
            const [how, recover] = recoveries[attempt];
            rec.retries = [...(rec.retries ?? []), `${name}:${how}`];
            await recover();
          }
        }
      }
      await page.waitForTimeout(1000);
      const seen = { retried, ...(await visibleText()), ...(await viewportState()) };
      // A SR that OHIF can hydrate asks whether to track its measurements: answer as the job says.
      const prompt = page.getByText('continue tracking measurements', { exact: false });
      seen.trackingPrompt = await prompt.isVisible().catch(() => false);
      if (seen.trackingPrompt && sr.track) {
        await page.getByRole('button', { name: 'Yes' }).click();
        await page.waitForTimeout(3000);
        Object.assign(seen, { tracked: await visibleText() });
      }
      // The measurement panel: what OHIF tracks from this SR (empty unless it could hydrate it).
      await page.locator('[data-cy="trackedMeasurements-btn"]').click();
      await page.waitForTimeout(1500);
      seen.measurementPanel = await page.evaluate(() => {
        const panel = document.querySelector('[data-cy="trackedMeasurements-panel"], [data-cy="measurements-panel"]');
        return (panel ?? document.body).innerText;
      });
      return seen;
    });
  }

  if (w.sr) await srStep('sr', { label: w.sr, expect: w.srExpect, track: w.srTrack });

  if (w.seg) {
    await step('seg', async () => {
      await openSeries(w.seg);
      // OHIF asks before it overlays a SEG on its referenced image.
      const yes = page.getByRole('button', { name: 'Yes' });
      const load = page.getByText('LOAD', { exact: true });
      const failed = failOnError();
      await Promise.race([yes.waitFor({ state: 'visible' }), load.waitFor({ state: 'visible' }), failed]);
      failed.cancel();
      if (await yes.isVisible().catch(() => false)) await yes.click();
      else await load.click();
      await skipTour();
      await page.locator('[data-cy="panelSegmentation-btn"]').click();
      if (w.segExpect) {
        await page.getByText(w.segExpect, { exact: false }).first().waitFor({ state: 'visible' });
      }
      await page.waitForTimeout(1500);
      const seen = { ...(await visibleText()), ...(await viewportState()) };
      if (w.segColours) {
        // Loaded means drawn: wait until the first segment's colour shows on the image.
        const t0 = Date.now();
        for (;;) {
          seen.segmentBoxes = await segmentBoxes(w.segColours);
          if (seen.segmentBoxes[0].pixels > 0 || Date.now() - t0 > stepTimeout / 2) break;
          await page.waitForTimeout(1000);
        }
      }
      return seen;
    });
  }

  if (w.key) {
    await step('key', async () => {
      // The key image (Secondary Capture with the outline and the risk burned in) as a plain image.
      await openSeries(w.key);
      await page.waitForTimeout(2500);
      await skipTour();
      const seen = { ...(await visibleText()), ...(await viewportState()) };
      if (w.keyColours) {
        // Drawn means the first colour (e.g. the red research-use line) shows on the canvas.
        const t0 = Date.now();
        for (;;) {
          seen.colourBoxes = await segmentBoxes(w.keyColours);
          if (seen.colourBoxes[0].pixels > 0 || Date.now() - t0 > stepTimeout / 2) break;
          await page.waitForTimeout(1000);
        }
        Object.assign(seen, await viewportState());
      }
      return seen;
    });
  }

  // A second SR of the same study (the "ohif" profile), last: tracking it changes the viewer's state.
  if (w.sr2) await srStep('sr2', w.sr2);
}

for (const [i, w] of walks.entries()) {
  walk = w;
  rec = job.walks ? { prefix: w.prefix, study: w.study, steps: {}, timingsMs: {} } : out;
  if (job.walks) out.walks = [...(out.walks ?? []), rec];
  if (i > 0 && w.list === undefined) w.list = false;
  await walkStudy(w);
}

clearTimeout(hardStop);
await ctx.close();
fs.writeSync(1, JSON.stringify(out) + '\n');
