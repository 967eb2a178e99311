// Server-Sent Events read with fetch(), because EventSource cannot send the
// Authorization header and a token in the URL would end up in access logs.
// Reconnects with Last-Event-ID, so no change is missed across a drop.
"use strict";

/* exported openEventStream */
function openEventStream(url, options) {
  const headers = options.headers || {};
  const onEvent = options.onEvent;
  const onState = options.onState || function () {};
  let lastId = null;
  let retryMs = 2000;
  let controller = null;
  let closed = false;
  let timer = null;

  function dispatch(block) {
    let data = [];
    let type = "message";
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") type = value;
      else if (field === "id") lastId = value;
      else if (field === "retry" && /^\d+$/.test(value)) retryMs = Number(value);
    }
    if (data.length) onEvent(type, data.join("\n"), lastId);
  }

  async function connect() {
    controller = new AbortController();
    const sent = Object.assign({ Accept: "text/event-stream" }, headers);
    if (lastId !== null) sent["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(url, { headers: sent, signal: controller.signal, cache: "no-store" });
    } catch (err) {
      return again("unreachable");
    }
    if (!response.ok || !response.body) {
      onState("error", response.status);
      // A refused token will not fix itself: the page asks for a new one.
      if (response.status === 401) return;
      return again("error");
    }
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      // the connection dropped (server restart, network): reconnect below
    }
    again("reconnecting");
  }

  function again(state) {
    if (closed) return;
    onState(state);
    timer = setTimeout(connect, retryMs);
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (controller) controller.abort();
    },
  };
}
