// The events the recommendations backend learns from; everything else stays in the browser.
export const FORWARDED_EVENTS = [
  "product_viewed",
  "product_added_to_cart",
  "product_removed_from_cart",
  "checkout_completed",
];

// Keep only what the backend reads, so no personal data leaves the storefront.
export function slimEvent(event) {
  const base = {id: event.id, name: event.name, timestamp: event.timestamp, clientId: event.clientId};
  const data = event.data || {};
  const variant = (v) => v && {id: v.id, price: v.price, product: v.product && {id: v.product.id}};
  if (event.name === "checkout_completed") {
    const checkout = data.checkout || {};
    return {...base, data: {checkout: {
      order: checkout.order ? {id: checkout.order.id} : undefined,
      lineItems: (checkout.lineItems || []).map((line) => ({quantity: line.quantity, variant: variant(line.variant)})),
    }}};
  }
  const productVariant = data.productVariant || (data.cartLine && data.cartLine.merchandise);
  return {...base, data: {productVariant: variant(productVariant)}};
}

// Subscribe to the forwarded events and post each with sendBeacon (it survives page unloads).
export function forwardEvents({analytics, browser, init, settings}) {
  const shop = init.data.shop.myshopifyDomain;
  const url = `${settings.collectUrl}?shop=${encodeURIComponent(shop)}`;
  for (const name of FORWARDED_EVENTS) {
    analytics.subscribe(name, (event) => browser.sendBeacon(url, JSON.stringify(slimEvent(event))));
  }
}
