// Open each OFTSR workflow in a running ComfyUI's web page as a user would (headless Chromium),
// check it (no missing-nodes dialog, every node known, widgets keep their values, t is a 0..1
// slider), run the basic workflow from the page and screenshot it. Exits 1 on any problem.
//
//   npm install playwright-core   # uses Debian's /usr/bin/chromium; nothing else is downloaded
//   node scripts/check_workflows_in_browser.js http://127.0.0.1:8188 workflows out/
//
// The server must have this pack, the workflows' models and `example.png` (and
// `example_mask.png`) in its input folder; every request off 127.0.0.1 is blocked.
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');
const [BASE, WF_DIR, OUT] = process.argv.slice(2);
if (!BASE || !WF_DIR || !OUT) { console.error('usage: node check_workflows_in_browser.js BASE_URL WORKFLOW_DIR OUT_DIR'); process.exit(2); }
fs.mkdirSync(OUT, { recursive: true });
const SHOT = path.join(OUT, 'comfyui_basic_upscale.png');
const FILES = ['oftsr_basic_upscale.json', 'oftsr_t_sweep.json', 'oftsr_teacher_vs_student.json', 'oftsr_regional_tradeoff.json', 'oftsr_upscale_model.json'];

async function fitView(page) {
  await page.evaluate(() => {
    const nodes = app.graph._nodes;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
      x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const c = app.canvas.canvas, r = c.getBoundingClientRect();
    const m = 30, top = 100, bottom = 60;
    const scale = Math.min((r.width - 2 * m) / (x1 - x0), (r.height - top - bottom) / (y1 - y0), 1.2);
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [m / scale - x0 + ((r.width - 2 * m) / scale - (x1 - x0)) / 2, top / scale - y0];
    app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(500);
}

(async () => {
  const report = { workflows: {}, console: [], blocked: [] };
  // a fresh user: skip the first-run template browser
  for (const [k, v] of [['Comfy.TutorialCompleted', true], ['Comfy.Minimap.Visible', false]]) {
    await fetch(`${BASE}/settings/${k}`, { method: 'POST', body: JSON.stringify(v) });
  }
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium', headless: true, timeout: 120000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
    page.on('console', m => { if (m.type() === 'error' || m.type() === 'warning') report.console.push(`[${m.type()}] ${m.text()}`.slice(0, 400)); });
    page.on('pageerror', e => report.console.push(`[pageerror] ${e}\n${(e.stack || '').slice(0, 600)}`));
    page.on('response', r => { if (r.status() >= 400) report.console.push(`[http ${r.status()}] ${r.url()}`.slice(0, 300)); });
    await page.route('**/*', route => {
      const u = new URL(route.request().url());
      if (u.protocol === 'data:' || u.protocol === 'blob:' || u.hostname === '127.0.0.1') return route.continue();
      report.blocked.push(u.href.slice(0, 200));
      return route.abort();
    });
    await page.goto(BASE + '/', { waitUntil: 'load', timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas && window.LiteGraph, null, { timeout: 120000 });
    await page.waitForTimeout(3000);
    report.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null);
    await page.keyboard.press('Escape');

    for (const file of FILES) {
      const wf = JSON.parse(fs.readFileSync(path.join(WF_DIR, file), 'utf8'));
      await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, wf);
      await page.waitForTimeout(2000);
      const r = await page.evaluate((wf) => {
        const dialogs = [...document.querySelectorAll('.p-dialog, [role="dialog"]')]
          .filter(d => d.offsetParent !== null).map(d => d.innerText.replace(/\s+/g, ' ').slice(0, 300));
        const unknown = app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
        const nodes = app.graph._nodes.map(n => ({
          id: n.id, type: n.type, title: n.title,
          widgets: (n.widgets || []).map(w => ({ name: w.name, type: w.type, value: w.value,
            min: w.options && w.options.min, max: w.options && w.options.max, step: w.options && (w.options.step2 ?? w.options.step),
            round: w.options && w.options.round })),
        }));
        const ser = app.graph.serialize();
        const changed = [];
        for (const n of wf.nodes) {
          const s = ser.nodes.find(x => x.id === n.id);
          if (!s) { changed.push([n.id, 'gone']); continue; }
          if (JSON.stringify(s.widgets_values) !== JSON.stringify(n.widgets_values)) changed.push([n.id, n.type, n.widgets_values, s.widgets_values]);
        }
        return { dialogs, unknown, nodes, changed, links: ser.links.length };
      }, wf);
      report.workflows[file] = r;
      await fitView(page);
      await page.screenshot({ path: path.join(OUT, `${path.basename(file, '.json')}_loaded.png`) });
      await page.keyboard.press('Escape');
    }

    // run the basic workflow through the page's own Queue button path
    const basic = JSON.parse(fs.readFileSync(path.join(WF_DIR, FILES[0]), 'utf8'));
    await page.reload({ waitUntil: 'load', timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas && window.LiteGraph, null, { timeout: 120000 });
    await page.waitForTimeout(3000);
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, 'oftsr_basic_upscale'); }, basic);
    await page.waitForTimeout(1500);
    const saveId = basic.nodes.find(n => n.type === 'SaveImage').id;
    await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
    await page.waitForFunction((id) => { const n = app.graph.getNodeById(id); return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete; },
                               saveId, { timeout: 300000, polling: 1000 });
    await page.waitForTimeout(1500);
    await fitView(page);
    await page.waitForTimeout(1000);
    await page.screenshot({ path: SHOT });
    report.ran = await page.evaluate((id) => app.graph.getNodeById(id).imgs.map(i => [i.naturalWidth, i.naturalHeight, i.src.slice(0, 160)]), saveId);
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(OUT, 'report.json'), JSON.stringify(report, null, 1));
  const problems = [];
  for (const [file, r] of Object.entries(report.workflows)) {
    if (r.unknown.length) problems.push(`${file}: unknown node types ${r.unknown}`);
    if (r.dialogs.some(d => /missing/i.test(d))) problems.push(`${file}: missing-nodes dialog: ${r.dialogs}`);
    if (r.changed.length) problems.push(`${file}: widget values changed on load: ${JSON.stringify(r.changed)}`);
    for (const n of r.nodes) for (const w of n.widgets) {
      if (['t', 't_inside', 't_outside'].includes(w.name) && n.type.startsWith('OFTSR') &&
          (w.type !== 'slider' || w.min !== 0 || w.max !== 1)) problems.push(`${file}: ${n.type}.${w.name} is not a 0..1 slider`);
    }
  }
  if (!report.ran || !report.ran.length) problems.push('the basic workflow produced no image in the page');
  console.log(problems.length ? problems.join('\n') : `ok: ${Object.keys(report.workflows).length} workflows, screenshot ${SHOT}`);
  process.exit(problems.length ? 1 : 0);
})().catch(e => { console.error(e); process.exit(1); });
