const refresh = setTimeout(() => location.reload(), Number(document.body.dataset.refreshSeconds) * 1000);
document.addEventListener('click', async (event) => {
  const button = event.target.closest('button[data-url]');
  if (!button) return;
  clearTimeout(refresh);
  button.disabled = true;
  const message = document.getElementById('message');
  try {
    const response = await fetch(button.dataset.url, {
      method: button.dataset.method, credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'Accept': 'application/json'},
      body: button.dataset.body || '{}'});
    if (!response.ok) {
      const body = await response.json().catch(() => ({detail: response.statusText}));
      message.textContent = `${response.status}: ${typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail)}`;
      message.className = 'card error';
      button.disabled = false;
      return;
    }
    location.reload();
  } catch (error) {
    message.textContent = String(error); message.className = 'card error'; button.disabled = false;
  }
});
const target = document.querySelector('tr.highlight');
if (target) target.scrollIntoView({block: 'center'});
